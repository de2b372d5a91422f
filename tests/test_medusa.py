"""Medusa heads and MedusaStrategy: identity at init, save/load, validation, greedy equality (chain and tree)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import EOS, make_llama, repetitive_prompt

import hf_specdec
from hf_specdec.cpu_speedups import CpuLinear, optimize_for_cpu
from hf_specdec.medusa_heads import MedusaHeads, MedusaHeadsConfig, medusa_labels, medusa_loss, output_rows
from hf_specdec.tree import LARGE_TREE, build_tree, chain_tree

NUM_PROMPTS = 20
NEW_TOKENS = 20


def make_heads(model, num_heads=4, seed=None, separate=False, draft_vocab=None, conditioned=False) -> MedusaHeads:
    """Heads for `model` (token-conditioned ones if `conditioned`); zero-initialised, or random (so drafts vary)
    when `seed` is given; drafting only from `draft_vocab` token ids when given."""
    heads = MedusaHeads(MedusaHeadsConfig(model.config.hidden_size, model.config.vocab_size, num_heads,
                                          separate_lm_head=separate, token_conditioned=conditioned))
    if separate:
        heads.init_separate_lm_heads(model.get_output_embeddings())
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in heads.named_parameters():
                if not name.startswith("lm_heads"):
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    if draft_vocab is not None:
        heads.restrict_draft_vocab(torch.as_tensor(draft_vocab))
    return heads


@pytest.mark.parametrize("conditioned", [False, True])
@torch.no_grad()
def test_zero_initialised_heads_reproduce_the_base_prediction(tiny_llama, conditioned):
    heads = make_heads(tiny_llama, conditioned=conditioned).attach_target(tiny_llama)
    prompt = repetitive_prompt(0)
    out = tiny_llama(prompt, output_hidden_states=True)
    tokens = torch.randint(0, tiny_llama.config.vocab_size, (prompt.shape[1], heads.num_heads))
    logits = heads(out.hidden_states[-1][0], tokens if conditioned else None)  # [L, K, V]
    for k in range(heads.num_heads):
        assert torch.equal(logits[:, k].argmax(-1), out.logits[0].argmax(-1))
        torch.testing.assert_close(logits[:, k], out.logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("separate", "draft_vocab", "conditioned"),
                         [(False, None, False), (True, None, False), (False, [3, 1, 2, 40, 77], False),
                          (False, [3, 1, 2, 40, 77], True)])
def test_save_load_round_trip_is_bit_exact(tmp_path, tiny_llama, separate, draft_vocab, conditioned):
    heads = make_heads(tiny_llama, seed=1, separate=separate, draft_vocab=draft_vocab, conditioned=conditioned)
    heads.save_pretrained(tmp_path)
    saved = {p.name for p in tmp_path.iterdir()}
    assert saved == {"config.json", "model.safetensors"}
    loaded = MedusaHeads.from_pretrained(tmp_path)
    assert loaded.config == heads.config
    assert heads.state_dict().keys() == loaded.state_dict().keys()
    for name, tensor in heads.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert not any("lm_head" in name for name in heads.state_dict()) or separate  # shared head never saved
    assert not any("embed" in name for name in heads.state_dict())  # nor the target's input embeddings


@pytest.mark.parametrize("separate", [False, True])
@torch.no_grad()
def test_restricted_draft_vocab_drafts_the_best_allowed_tokens(tiny_llama, separate):
    """Drafting over a subset of the vocabulary gives, per head, the full-vocabulary logits' argmax over that subset."""
    vocab = torch.arange(0, tiny_llama.config.vocab_size, 3)
    heads = make_heads(tiny_llama, seed=2, separate=separate, draft_vocab=vocab)
    assert heads.config.draft_vocab_size == vocab.numel()
    heads.attach_lm_head(tiny_llama.get_output_embeddings())
    hidden = tiny_llama(repetitive_prompt(0), output_hidden_states=True).hidden_states[-1][0, -1]  # [H]
    logits, ids = heads.draft_logits(hidden, depth=3)
    assert logits.shape == (3, vocab.numel()) and torch.equal(ids, vocab)
    full = heads(hidden)[:3]  # [3, V]
    torch.testing.assert_close(logits, full[:, vocab])
    with pytest.raises(ValueError, match="non-empty"):
        heads.restrict_draft_vocab(torch.tensor([tiny_llama.config.vocab_size]))


@torch.no_grad()
def test_drafting_rows_are_cut_once_and_follow_weight_changes(tiny_llama):
    heads = make_heads(tiny_llama, seed=2, separate=True, draft_vocab=[5, 9, 11])
    hidden = torch.randn(tiny_llama.config.hidden_size)
    first = heads._drafting_projections()
    heads.eval()  # what every MedusaStrategy does: no rebuild
    assert heads._drafting_projections() is first
    heads.lm_heads[0].weight.mul_(2.0)  # an in-place update, as an optimizer step makes
    logits, _ = heads.draft_logits(hidden, depth=1)
    assert heads._drafting_projections() is not first
    torch.testing.assert_close(logits[0], heads(hidden)[0, [5, 9, 11]])


def assert_nodes_follow_heads(heads, hidden, last_token, tree, tokens, probs) -> None:
    """Node (r_1, ..., r_d) holds head d's rank-r_d token and its probability; token-conditioned heads read
    x_{t+1} (`last_token`) and the node's own ancestors."""
    assert tokens.shape == probs.shape == (tree.num_nodes,)
    for node, path in enumerate(tree.paths):
        context = [last_token] + [int(tokens[a]) for a in tree.ancestors(node)[:-1]]
        context += [0] * (heads.num_heads - len(path))
        logits = heads(hidden, torch.tensor(context) if heads.config.token_conditioned else None)[len(path) - 1]
        ranked = logits.softmax(-1).topk(path[-1] + 1)  # [V] -> the top r_d + 1
        assert int(tokens[node]) == int(ranked.indices[-1]), path
        torch.testing.assert_close(probs[node], ranked.values[-1])


def heads_and_hidden(tiny_llama, conditioned):
    heads = make_heads(tiny_llama, seed=5, conditioned=conditioned).attach_target(tiny_llama)
    if conditioned:  # embeddings larger than the tiny model's (std 0.02), so the tokens visibly matter
        with torch.random.fork_rng():  # seeded: unseeded embeddings made the tests below flaky
            torch.manual_seed(6)
            embeddings = torch.nn.Embedding(tiny_llama.config.vocab_size, tiny_llama.config.hidden_size)
        heads.attach_embeddings(embeddings)
    return heads, tiny_llama(repetitive_prompt(0), output_hidden_states=True).hidden_states[-1][0, -1]  # [H]


@pytest.mark.parametrize("conditioned", [False, True])
@torch.no_grad()
def test_chains_of_every_row_in_one_pass_equal_each_rows_own_chain(tiny_llama, conditioned):
    """draft_chains (a batch's rows in one pass) gives each row the chain draft_tree gives it alone."""
    heads, _ = heads_and_hidden(tiny_llama, conditioned)
    hidden = tiny_llama(repetitive_prompt(1), output_hidden_states=True).hidden_states[-1][0, -3:]  # 3 rows [3, H]
    last = torch.tensor([17, 4, 60])
    tokens, probs = heads.draft_chains(hidden, last, 3)  # [3, 3]
    for row in range(3):
        alone, alone_probs = heads.draft_tree(hidden[row], int(last[row]), chain_tree(3))
        assert tokens[row].tolist() == alone.tolist()
        torch.testing.assert_close(probs[row], alone_probs.to(probs.dtype))


@pytest.mark.parametrize("conditioned", [False, True])
@torch.no_grad()
def test_draft_tree_gives_each_node_its_heads_ranked_token(tiny_llama, conditioned):
    heads, hidden = heads_and_hidden(tiny_llama, conditioned)
    tree = build_tree(LARGE_TREE)
    tokens, probs = heads.draft_tree(hidden, 17, tree)
    assert_nodes_follow_heads(heads, hidden, 17, tree, tokens, probs)
    first_children = {int(tokens[tree.children()[1 + parent][0]]) for parent in range(4)}  # the depth-1 nodes
    assert (len(first_children) > 1) == conditioned  # plain heads give every depth-1 node the same children


@pytest.mark.parametrize("conditioned", [False, True])
@torch.no_grad()
def test_dynamic_tree_keeps_the_most_probable_paths(tiny_llama, conditioned):
    heads, hidden = heads_and_hidden(tiny_llama, conditioned)
    tree, tokens, probs = heads.draft_dynamic_tree(hidden, 17, depth=3, num_nodes=9, width=3)
    assert tree.num_nodes == 9 and tree.max_depth <= 3 and tree.max_rank <= 3
    assert_nodes_follow_heads(heads, hidden, 17, tree, tokens, probs)
    path_probs = [float(torch.prod(probs[tree.ancestors(node)])) for node in range(tree.num_nodes)]
    # Every expanded node's children that were dropped are less probable than every kept node.
    kept = set(tree.paths)
    for node, path in enumerate(tree.paths):
        if len(path) < 3 and any(child[:-1] == path for child in kept if len(child) == len(path) + 1):
            dropped = [(*path, r) for r in range(3) if (*path, r) not in kept]
            if dropped:  # ranks are ordered, so the best dropped child is the lowest rank missing
                context = [17] + [int(tokens[a]) for a in tree.ancestors(node)]
                context += [0] * (heads.num_heads - len(context))
                logits = heads(hidden, torch.tensor(context) if conditioned else None)[len(path)]
                best_dropped = path_probs[node] * float(logits.softmax(-1).topk(3).values[dropped[0][-1]])
                assert best_dropped <= min(path_probs) + 1e-6
    single, token, _ = heads.draft_dynamic_tree(hidden, 17, depth=3, num_nodes=1, width=3)
    assert single.paths == ((0,),) and int(token[0]) == int(heads(hidden, torch.tensor([17, 0, 0, 0]) if conditioned
                                                                   else None)[0].argmax())


def test_token_conditioned_heads_need_the_targets_embeddings(tiny_llama):
    heads = make_heads(tiny_llama, conditioned=True).attach_lm_head(tiny_llama.get_output_embeddings())
    hidden = torch.randn(tiny_llama.config.hidden_size)
    with pytest.raises(ValueError, match="attach_target"):
        heads(hidden, torch.zeros(heads.num_heads, dtype=torch.long))
    with pytest.raises(ValueError, match="need `tokens`"):
        heads(hidden)
    with pytest.raises(ValueError, match="input embedding table has shape"):
        heads.attach_embeddings(torch.nn.Embedding(5, tiny_llama.config.hidden_size))


@torch.no_grad()
def test_output_rows_keep_the_cpu_kernels():
    linear = torch.nn.Linear(8, 30)
    rows = output_rows(optimize_for_cpu(copy.deepcopy(linear)), torch.tensor([4, 0, 29]))
    assert isinstance(rows, CpuLinear) and not rows.weight.requires_grad
    x = torch.randn(3, 8)
    torch.testing.assert_close(rows(x), linear(x)[:, [4, 0, 29]])
    assert type(output_rows(linear, torch.tensor([1]))) is torch.nn.Linear


def test_config_validation_and_labels():
    with pytest.raises(ValueError, match="draft_vocab_size"):
        MedusaHeadsConfig(8, 10, draft_vocab_size=11)
    with pytest.raises(ValueError, match="num_heads"):
        MedusaHeadsConfig(8, 10, num_heads=0)
    with pytest.raises(ValueError, match="Unknown keys"):
        MedusaHeadsConfig.from_dict({"hidden_size": 8, "vocab_size": 10, "heads": 3})
    labels = medusa_labels(torch.tensor([10, 11, 12, 13, 14]), 2)
    assert labels.tolist() == [[12, 13], [13, 14], [14, -100], [-100, -100], [-100, -100]]
    logits = torch.full((3, 2, 20), -5.0)
    logits[0, 0, 12] = logits[0, 1, 13] = logits[1, 0, 13] = 5.0
    loss, accuracy = medusa_loss(logits, labels[:3], decay=0.8)
    assert accuracy.tolist() == pytest.approx([2 / 3, 1 / 2])
    assert loss > 0


def test_strategy_rejects_mismatched_heads(tiny_llama):
    heads = MedusaHeads(MedusaHeadsConfig(hidden_size=16, vocab_size=97))
    with pytest.raises(ValueError, match="hidden_size=16"):
        tiny_llama.generate(repetitive_prompt(0), max_new_tokens=3, assistant_model=hf_specdec.MedusaStrategy(heads, tree="default", lookup_min_ngram=0, num_speculative_tokens=4))
    with pytest.raises(ValueError, match="Unknown tree"):
        hf_specdec.MedusaStrategy(heads, tree="huge")
    with pytest.raises(TypeError, match="MedusaHeads"):
        hf_specdec.MedusaStrategy(tiny_llama)


@pytest.mark.parametrize("settings", [{"tree": [[0], [1], [0, 0]], "num_speculative_tokens": 3},
                                      {"tree": "dynamic", "tree_nodes": 7, "tree_width": 2}])
def test_config_round_trip(tmp_path, settings):
    config = hf_specdec.MedusaConfig(**settings)
    config.save_pretrained(tmp_path)
    assert hf_specdec.StrategyConfig.from_pretrained(tmp_path) == config


def test_dynamic_tree_settings_are_checked():
    for bad in ({"tree_nodes": 0}, {"tree_width": 0}, {"tree_nodes": 2.5}):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            hf_specdec.MedusaConfig(tree="dynamic", **bad)


@pytest.fixture(scope="module")
def plain_outputs(tiny_llama):
    return [tiny_llama.generate(repetitive_prompt(seed), max_new_tokens=NEW_TOKENS, do_sample=False)
            for seed in range(NUM_PROMPTS)]


@pytest.mark.parametrize(("tree", "head_seed", "min_confidence", "draft_vocab_step", "conditioned"), [
    (None, None, 0.0, None, False), ("default", None, 0.0, None, False),
    ([[0], [1], [0, 0], [1, 0], [0, 1, 0]], 7, 0.0, None, False), (None, None, 0.1, None, False),
    ("large", None, 0.05, None, False), ("default", None, 0.0, 2, False),
    (None, 7, 0.0, None, True), ("large", 7, 0.0, None, True), ("default", None, 0.05, 2, True),
    ("dynamic", 7, 0.0, None, False), ("dynamic", 7, 0.0, 2, True), ("dynamic", None, 0.05, None, True),
])
def test_greedy_equals_plain_generate(tiny_llama, plain_outputs, tree, head_seed, min_confidence, draft_vocab_step,
                                      conditioned):
    # draft_vocab_step=2: drafting only from every other token id; conditioned: token-conditioned (Hydra) heads
    draft_vocab = None if draft_vocab_step is None else list(range(0, tiny_llama.config.vocab_size, draft_vocab_step))
    heads = make_heads(tiny_llama, seed=head_seed, draft_vocab=draft_vocab, conditioned=conditioned)
    strategy = hf_specdec.MedusaStrategy(heads, tree=tree, min_confidence=min_confidence)
    steps = 0
    for seed, expected in enumerate(plain_outputs):
        actual = tiny_llama.generate(repetitive_prompt(seed), max_new_tokens=NEW_TOKENS, do_sample=False,
                                     assistant_model=strategy)
        assert torch.equal(actual, expected), f"tree={tree} differs on prompt {seed}"
        steps += strategy.last_stats.verify_steps
    assert steps < NUM_PROMPTS * (NEW_TOKENS - 1)  # some drafts were accepted


@pytest.mark.parametrize("tree", [None, "default"])
def test_prompt_lookup_first_keeps_greedy_output(tiny_llama, plain_outputs, tree):
    strategy = hf_specdec.MedusaStrategy(make_heads(tiny_llama, seed=7), tree=tree, lookup_min_ngram=2,
                                         num_speculative_tokens=8)
    drafted = []
    strategy.step_listeners.append(lambda event: drafted.append(len(event.drafted)))
    for seed, expected in enumerate(plain_outputs):
        actual = tiny_llama.generate(repetitive_prompt(seed), max_new_tokens=NEW_TOKENS, do_sample=False,
                                     assistant_model=strategy)
        assert torch.equal(actual, expected), f"tree={tree} differs on prompt {seed}"
    assert max(drafted) > 4  # lookup continuations longer than the 4 heads can draft were proposed
    with pytest.raises(ValueError, match="lookup_min_ngram"):
        hf_specdec.MedusaConfig(lookup_min_ngram=5)


def test_min_confidence_one_never_drafts(tiny_llama, plain_outputs):
    for tree in (None, "default"):
        strategy = hf_specdec.MedusaStrategy(make_heads(tiny_llama), tree=tree, min_confidence=1.0, lookup_min_ngram=0)
        actual = tiny_llama.generate(repetitive_prompt(0), max_new_tokens=NEW_TOKENS, do_sample=False,
                                     assistant_model=strategy)
        assert torch.equal(actual, plain_outputs[0])
        assert strategy.last_stats.drafting_steps == 0
    with pytest.raises(ValueError, match="min_confidence"):
        hf_specdec.MedusaConfig(min_confidence=1.5)


def test_tree_respects_eos_max_length_and_processors(tiny_llama):
    heads = make_heads(tiny_llama)
    for max_new_tokens in (1, 2, 5):
        prompt = repetitive_prompt(1)
        expected = tiny_llama.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None)
        actual = tiny_llama.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                                     assistant_model=hf_specdec.MedusaStrategy(heads, tree="default", lookup_min_ngram=0, num_speculative_tokens=4))
        assert torch.equal(actual, expected)
    prompt = repetitive_prompt(2)
    free_run = tiny_llama.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None)
    eos = int(free_run[0, prompt.shape[1] + 6])
    kwargs = {"max_new_tokens": 30, "do_sample": False, "eos_token_id": eos}
    assert torch.equal(tiny_llama.generate(prompt, assistant_model=hf_specdec.MedusaStrategy(heads, tree="default", lookup_min_ngram=0, num_speculative_tokens=4), **kwargs),
                       tiny_llama.generate(prompt, **kwargs))
    kwargs = {"max_new_tokens": 25, "do_sample": False, "repetition_penalty": 1.5, "min_new_tokens": 20,
              "eos_token_id": EOS}
    for seed in range(4):
        prompt = repetitive_prompt(seed)
        for tree in (None, "default"):
            strategy = hf_specdec.MedusaStrategy(make_heads(tiny_llama, seed=3), tree=tree)
            assert torch.equal(tiny_llama.generate(prompt, assistant_model=strategy, **kwargs),
                               tiny_llama.generate(prompt, **kwargs))


@pytest.mark.parametrize("conditioned", [False, True])
def test_sampling_runs_and_typical_is_labelled_lossy(tiny_llama, conditioned):
    heads = make_heads(tiny_llama, seed=2, conditioned=conditioned)
    prompt = repetitive_prompt(3)
    for tree in (None, "default", "dynamic"):
        strategy = hf_specdec.MedusaStrategy(heads, tree=tree)
        torch.manual_seed(0)
        out = tiny_llama.generate(prompt, max_new_tokens=20, do_sample=True, eos_token_id=None,
                                  assistant_model=strategy)
        assert out.shape[1] == prompt.shape[1] + 20 and strategy.last_stats.lossless
        typical = hf_specdec.MedusaStrategy(heads, tree=tree, verification="typical")
        with pytest.warns(UserWarning, match="LOSSY"):
            tiny_llama.generate(prompt, max_new_tokens=10, do_sample=True, assistant_model=typical)
        assert not typical.last_stats.lossless


def test_self_consistent_heads_accept_whole_tree_paths():
    """A target that always emits token 42: identity heads predict it perfectly, so whole paths are accepted and
    the bonus token follows (exercises the all-accepted branch of the tree step)."""
    model = make_llama(seed=11)
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[42] = 10.0
    prompt = torch.tensor([[5, 6, 7]])
    expected = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)
    strategy = hf_specdec.MedusaStrategy(make_heads(model), tree="default", lookup_min_ngram=0, num_speculative_tokens=4)
    actual = model.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, assistant_model=strategy)
    assert torch.equal(actual, expected)
    assert strategy.last_stats.mean_accepted_length > 4.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["medusa-smollm2-135m", "hydra-smollm2-135m"])
def test_committed_heads_on_the_real_model(name):
    """The heads shipped in heads/ load, fit the real target, and keep greedy output exact."""
    from pathlib import Path

    from hf_specdec.data import load_humaneval
    from hf_specdec.models import load_smollm2, load_smollm2_tokenizer

    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    heads = MedusaHeads.from_pretrained(Path(__file__).resolve().parents[1] / "heads" / name)
    prompt = tokenizer(load_humaneval(limit=1)[0].text, return_tensors="pt").input_ids
    expected = model.generate(prompt, max_new_tokens=32, do_sample=False)
    for tree in (None, "default", "dynamic"):
        strategy = hf_specdec.MedusaStrategy(heads, tree=tree)
        assert torch.equal(model.generate(prompt, max_new_tokens=32, do_sample=False, assistant_model=strategy),
                           expected)
        assert strategy.last_stats.mean_accepted_length > 1.2
