"""The EAGLE drafter and EagleStrategy: determinism, save/load, the training-time forward equals run-time drafting,
greedy equality (chain, dynamic tree, lookup hybrid), the drafter's cache after rejections, refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make_llama, repetitive_prompt

import hf_specdec
from hf_specdec import EagleDrafter, EagleDrafterConfig, EagleStrategy
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.eagle_drafter import DrafterCache

NUM_PROMPTS = 20
NEW_TOKENS = 20


def make_drafter(model, seed: int = 0, draft_vocab=None) -> EagleDrafter:
    torch.manual_seed(seed)
    return EagleDrafter.from_target(model, draft_vocab).eval()


def aux_features(target, drafter, ids: torch.LongTensor) -> torch.Tensor:
    """The drafter's auxiliary target features `[B, L, A * H]` of `ids`, as the engine hands them over."""
    states = target(ids, output_hidden_states=True).hidden_states
    return torch.cat([states[i] for i in drafter.config.aux_layer_ids], dim=-1)


@pytest.fixture(scope="module")
def target():
    return make_llama(seed=4)


@pytest.fixture(scope="module")
def fitted_drafter(target) -> EagleDrafter:
    """A drafter fitted for a few seconds to the tiny target's own greedy text (unrolled as the recipe does), so
    that drafts get accepted and the tests exercise accepted paths, not only rejections."""
    steps = 3
    ids = torch.cat([target.generate(repetitive_prompt(100 + i), max_new_tokens=40, min_new_tokens=40,
                                     do_sample=False) for i in range(40)])  # [40, N]
    drafter = make_drafter(target, seed=1).train()
    drafter.lm_head.weight.requires_grad_(False)  # the target's rows, as the recipe keeps them
    anchors = ids.shape[1] - 1 - steps  # anchor p: features at p, tokens x_{p+1..p+steps}, labels x_{p+2..}
    with torch.no_grad():
        features = aux_features(target, drafter, ids)[:, :anchors]
    tokens = ids[:, 1 : anchors + steps]
    optimizer = torch.optim.AdamW([p for p in drafter.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(150):
        states = drafter.unrolled_states(features, tokens, steps=steps)
        loss = sum(torch.nn.functional.cross_entropy(drafter.draft_logits(s.flatten(0, 1))[0],
                                                     ids[:, 2 + j : 2 + j + anchors].flatten())
                   for j, s in enumerate(states))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return drafter.eval()


@pytest.fixture(scope="module")
def plain_outputs(target):
    return [target.generate(repetitive_prompt(i), max_new_tokens=NEW_TOKENS, do_sample=False)
            for i in range(NUM_PROMPTS)]


def test_untrained_drafter_is_deterministic_and_saves_bit_exact(tmp_path, target):
    a, b = make_drafter(target, seed=3, draft_vocab=[5, 2, 9, 40]), make_drafter(target, seed=3, draft_vocab=[5, 2, 9, 40])
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert a.draft_token_ids.tolist() == [2, 5, 9, 40]
    width = len(a.config.aux_layer_ids) * target.config.hidden_size
    features, tokens = a.project(torch.randn(5, width)), torch.randint(0, VOCAB, (5,))
    first = a.step(features, tokens, torch.arange(5), DrafterCache())
    assert torch.equal(first, a.step(features, tokens, torch.arange(5), DrafterCache()))

    a.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "hf_specdec_drafter.json"}
    loaded = EagleDrafter.from_pretrained(tmp_path)
    assert loaded.config == a.config and loaded.state_dict().keys() == a.state_dict().keys()
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert not any("embed_tokens" in name for name in a.state_dict())  # borrowed from the target, never saved
    assert torch.equal(loaded.attach_target(target).step(features, tokens, torch.arange(5), DrafterCache()), first)


@torch.no_grad()
def test_training_time_unroll_equals_run_time_drafting(target):
    """Step j of `unrolled_states` at anchor p is what the drafter outputs at run time after committing the
    target's pairs up to p and drafting j tokens on its own states (with the true tokens)."""
    drafter = make_drafter(target, seed=5)
    length, steps = 12, 4
    features = torch.randn(1, length, len(drafter.config.aux_layer_ids) * target.config.hidden_size)
    tokens = torch.randint(0, VOCAB, (1, length + steps - 1))
    unrolled = drafter.unrolled_states(features, tokens, steps=steps)
    for p in range(length):
        cache = DrafterCache()
        out = drafter.step(drafter.project(features[0, : p + 1]), tokens[0, : p + 1], torch.arange(p + 1), cache)[-1]
        torch.testing.assert_close(out, unrolled[0][0, p], atol=1e-5, rtol=1e-4)
        for j in range(1, steps):
            out = drafter.step(out[None], tokens[0, p + j : p + j + 1], torch.tensor([p + j]), cache)[-1]
            torch.testing.assert_close(out, unrolled[j][0, p], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("settings", "fitted"), [
    ({"tree": None, "lookup_min_ngram": 0}, True), ({"lookup_min_ngram": 0, "tree_nodes": 16, "depth": 6}, True),
    ({"tree": "dynamic", "tree_nodes": 5, "tree_width": 2, "lookup_min_ngram": 0}, False),
    ({"tree": "dynamic", "depth": 4}, True), ({}, True),
    ({"tree": None, "schedule": "heuristic", "lookup_min_ngram": 0}, True)])
def test_greedy_equals_plain_generate(target, plain_outputs, fitted_drafter, settings, fitted):
    drafter = fitted_drafter if fitted else make_drafter(target, seed=2, draft_vocab=range(0, VOCAB, 2))
    accepted = 0
    for i, plain in enumerate(plain_outputs):
        strategy = EagleStrategy(drafter, **settings)
        out = target.generate(repetitive_prompt(i), max_new_tokens=NEW_TOKENS, do_sample=False,
                              assistant_model=strategy)
        assert torch.equal(out, plain), f"prompt {i}"
        accepted += strategy.last_stats.accepted
    assert accepted > 0 or not fitted


def test_fitted_drafter_drafts_deeper_than_one(target, fitted_drafter):
    """The unrolled training made depth-2+ drafts right too: whole chains get accepted."""
    stats = []
    for i in range(NUM_PROMPTS):
        strategy = EagleStrategy(fitted_drafter, tree=None, lookup_min_ngram=0)
        target.generate(repetitive_prompt(i), max_new_tokens=NEW_TOKENS, do_sample=False, assistant_model=strategy)
        stats.append(strategy.last_stats.mean_accepted_length)
    assert sum(stats) / len(stats) > 1.5


@pytest.mark.parametrize("tree", [None, "dynamic"])
@torch.no_grad()
def test_drafter_cache_after_rejections_equals_the_accepted_paths(target, fitted_drafter, tree):
    """After decoding (drafts accepted and rejected), the drafter's cache holds exactly what one forward over the
    final text's (target feature, next token) pairs gives: rejected branches left nothing behind."""
    strategy = EagleStrategy(fitted_drafter, tree=tree, lookup_min_ngram=0)
    out = target.generate(repetitive_prompt(3), max_new_tokens=NEW_TOKENS, do_sample=False, assistant_model=strategy)
    stats = strategy.last_stats
    assert stats.accepted > 0 and (tree is not None or stats.drafted > stats.accepted)  # a tree always rejects some
    features = fitted_drafter.project(aux_features(target, fitted_drafter, out[:, :-1])[0])  # [n - 1, H]
    fresh = DrafterCache()
    fitted_drafter.step(features, out[0, 1:], torch.arange(out.shape[1] - 1), fresh)
    cache = strategy.rows[0].cache
    assert len(cache) == len(fresh) == out.shape[1] - 1
    torch.testing.assert_close(cache.keys, fresh.keys, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cache.values, fresh.values, atol=1e-4, rtol=1e-4)


def test_cpu_kernels_keep_greedy_output(target, plain_outputs, fitted_drafter):
    fast = optimize_for_cpu(make_llama(seed=4))
    strategy = EagleStrategy(fitted_drafter)
    for i in range(4):
        out = fast.generate(repetitive_prompt(i), max_new_tokens=NEW_TOKENS, do_sample=False, assistant_model=strategy)
        assert torch.equal(out, plain_outputs[i])


def test_strategy_folder_round_trip(tmp_path, target, fitted_drafter):
    strategy = EagleStrategy(fitted_drafter, tree=None, depth=3)
    strategy.save_pretrained(tmp_path, target=target)
    loaded = hf_specdec.AutoStrategy.from_pretrained(tmp_path)
    assert isinstance(loaded, EagleStrategy) and loaded.config == strategy.config
    assert isinstance(EagleDrafter.from_pretrained(tmp_path), EagleDrafter)  # the folder is a drafter folder too
    plain = target.generate(repetitive_prompt(0), max_new_tokens=NEW_TOKENS, do_sample=False)
    assert torch.equal(target.generate(repetitive_prompt(0), max_new_tokens=NEW_TOKENS, do_sample=False,
                                       assistant_model=loaded), plain)


def test_refusals_name_the_fix(tmp_path, target):
    with pytest.raises(TypeError, match="EagleDrafter"):
        EagleStrategy(object())
    with pytest.raises(ValueError, match="'dynamic' or None"):
        EagleStrategy(make_drafter(target), tree="default")
    other = make_llama(vocab_size=VOCAB + 3)
    with pytest.raises(ValueError, match="recipes/train_eagle.py"):
        other.generate(repetitive_prompt(0), max_new_tokens=4, assistant_model=EagleStrategy(make_drafter(target)))
    hf_specdec.MedusaHeads(hf_specdec.MedusaHeadsConfig(32, VOCAB)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="MedusaHeads.from_pretrained"):
        EagleDrafter.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="multiple"):
        EagleDrafterConfig(hidden_size=30, vocab_size=VOCAB, intermediate_size=8, num_attention_heads=4,
                           num_key_value_heads=2)
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text('{"drafter_type": "eagle", "hidden_size": 32}')
    (old / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="pre-EAGLE-3 layout"):
        EagleDrafter.from_pretrained(old)


def test_encoder_decoder_targets_are_refused(target):
    from hf_specdec.tiny_models import tiny_random_seq2seq

    seq2seq = tiny_random_seq2seq("t5", VOCAB, eos_token_id=1)
    with pytest.raises(ValueError, match="decoder-only"):
        seq2seq.generate(repetitive_prompt(0), max_new_tokens=4, assistant_model=EagleStrategy(make_drafter(target)))


def test_transformers_own_loop_gets_no_drafts_rather_than_wrong_ones(target):
    """Called through CandidateGenerator.get_candidates without our loop (no features), it drafts nothing."""
    strategy = EagleStrategy(make_drafter(target), lookup_min_ngram=0)  # the drafter's own part
    candidates, logits = strategy.get_candidates(repetitive_prompt(0))
    assert candidates.shape[1] == repetitive_prompt(0).shape[1] and logits is None


def _copy_rows(rows):
    """Deep copies of EAGLE row states (their caches' tensors cloned)."""
    copies = []
    for row in rows:
        copy = type(row)(row.schedule)
        copy.cache.keys = None if row.cache.keys is None else row.cache.keys.clone()
        copy.cache.values = None if row.cache.values is None else row.cache.values.clone()
        copy.last, copy.next_position = row.last, row.next_position
        copies.append(copy)
    return copies


@pytest.mark.parametrize("tree", [None, "dynamic"])
def test_batched_drafting_equals_each_row_alone(target, fitted_drafter, tree):
    """A padded batch drafts every row in one drafter forward per depth (and commits every row's pairs in one
    forward): each row's draft and committed state equal what that row gets alone."""
    strategy = EagleStrategy(fitted_drafter, tree=tree, tree_nodes=6, lookup_min_ngram=0,
                             skip_unprofitable_drafts=False)
    checked = {"drafts": 0, "commits": 0}
    batched_draft, batched_commit = strategy._draft, strategy._commit

    def draft(requests):
        drafts = batched_draft(requests)
        if len(requests) > 1:
            for request, together in zip(requests, drafts):
                alone = batched_draft([request])[0]
                assert torch.equal(alone.tokens, together.tokens)
                assert (alone.tree is None) == (together.tree is None)
                if alone.tree is not None:
                    assert torch.equal(alone.tree.tokens, together.tree.tokens)
                    assert torch.equal(alone.tree.tree.parents, together.tree.tree.parents)
                checked["drafts"] += bool(alone.tokens.numel())
        return drafts

    def commit(pending):
        if len(pending) > 1:
            copies = _copy_rows([row for row, *_ in pending])
            for copy, (_, features, tokens, first) in zip(copies, pending):
                batched_commit([(copy, features, tokens, first)])
        batched_commit(pending)
        if len(pending) > 1:
            for copy, (row, *_) in zip(copies, pending):
                torch.testing.assert_close(row.last, copy.last, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(row.cache.keys, copy.cache.keys, atol=1e-5, rtol=1e-5)
                assert row.next_position == copy.next_position
            checked["commits"] += 1

    strategy._draft, strategy._commit = draft, commit
    prompts = [repetitive_prompt(200 + i)[0] for i in range(3)]
    prompts = [prompts[0], prompts[1][:-5], prompts[2][:-9]]  # different lengths: left padding
    width = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), torch.ones(len(p), dtype=torch.long)])
                        for p in prompts])
    out = target.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, assistant_model=strategy)
    plain = target.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, plain)
    assert checked["drafts"] >= 6 and checked["commits"] >= 3, checked
