"""Batches: several prompts of different lengths, left-padded, through one `generate(assistant_model=strategy)` call.
Every strategy's greedy rows equal plain batched `generate` with the same padding, rows finish at different steps,
EOS lands inside drafts on some rows only, sampling matches plain batched sampling, and each row's cache holds
exactly its tokens."""

from __future__ import annotations

import pytest
import torch
from conftest import EOS, VOCAB, draft_strategy, make_llama, repetitive_prompt
from test_sampling import PROMPT, homogeneity_pvalue, random_heads, small_vocab_model  # noqa: F401 (fixture)

import hf_specdec
from hf_specdec.compat import output_cache
from hf_specdec.tiny_models import tiny_random_llama

MAX_NEW = 24


def left_padded(prompts: list[torch.LongTensor], pad: int = 0) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`[B, L]` ids and attention mask of 1-D prompts, padded on the left."""
    length = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), length), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        ids[b, length - prompt.numel():] = prompt
        mask[b, length - prompt.numel():] = 1
    return ids, mask


def batch(seed: int, size: int = 4) -> tuple[torch.LongTensor, torch.LongTensor]:
    return left_padded([repetitive_prompt(seed * 10 + b, 8 + 5 * b)[0] for b in range(size)])


def heads_for(model) -> hf_specdec.MedusaHeads:
    heads = hf_specdec.MedusaHeads(hf_specdec.MedusaHeadsConfig(model.config.hidden_size, VOCAB, num_heads=3))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return heads


def strategies(model) -> dict:
    return {
        "ngram": lambda: hf_specdec.NGramStrategy(skip_unprofitable_drafts=False),
        "ngram_defaults": lambda: hf_specdec.NGramStrategy(),
        "nasd": lambda: hf_specdec.NASDStrategy(skip_unprofitable_drafts=False),
        "draft_model": lambda: draft_strategy(make_llama(layers=1, seed=1)),
        "draft_model_lookup": lambda: draft_strategy(make_llama(layers=1, seed=1), lookup_min_ngram=2),
        "medusa_chain": lambda: hf_specdec.MedusaStrategy(heads_for(model), tree=None, skip_unprofitable_drafts=False),
        "medusa_tree": lambda: hf_specdec.MedusaStrategy(heads_for(model), tree="default", lookup_min_ngram=0,
                                                          skip_unprofitable_drafts=False),
        "hydra_dynamic": lambda: hf_specdec.MedusaStrategy(heads_for(model), tree="dynamic", tree_nodes=6,
                                                           skip_unprofitable_drafts=False),
        "hydra_gated": lambda: hf_specdec.MedusaStrategy(heads_for(model), tree="dynamic", tree_nodes=6),
        "eagle_chain": lambda: hf_specdec.EagleStrategy(drafter_for(model), tree=None, lookup_min_ngram=0,
                                                        skip_unprofitable_drafts=False),
        "eagle_tree": lambda: hf_specdec.EagleStrategy(drafter_for(model), tree_nodes=6, tree_width=2,
                                                       skip_unprofitable_drafts=False),
    }


def drafter_for(model) -> hf_specdec.EagleDrafter:
    torch.manual_seed(3)
    return hf_specdec.EagleDrafter(hf_specdec.EagleDrafterConfig.for_target(model.config))


def tiny_qwen2():
    """A second architecture (Qwen2: biased q/k/v projections, its own attention code path)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=EOS, pad_token_id=0, bos_token_id=0, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config).eval()
    torch.random.set_rng_state(state)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = EOS, 0
    return model


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def target(request):
    return make_llama() if request.param == "llama" else tiny_qwen2()


def assert_rows_equal(model, plain: torch.LongTensor, ours: torch.LongTensor, ids, mask) -> None:
    """Row for row equality; a mismatch is accepted only at a float near-tie of plain's top-2 logits (< 1e-4)."""
    assert ours.shape == plain.shape
    for b in range(plain.shape[0]):
        if torch.equal(plain[b], ours[b]):
            continue
        position = int((plain[b] != ours[b]).nonzero()[0])
        logits = model(plain[b : b + 1, :position], attention_mask=torch.cat(
            [mask[b : b + 1], torch.ones(1, position - mask.shape[1], dtype=torch.long)], dim=1)).logits[0, -1]
        top2 = logits.topk(2).values
        assert float(top2[0] - top2[1]) < 1e-4, f"row {b} differs at {position} (top-2 gap {float(top2[0] - top2[1])})"


def batched_drafted_equal_to_plain(model, strategy, seeds=range(3), max_new_tokens: int = MAX_NEW) -> int:
    """Greedy over `batch(seed)` for each seed with and without `strategy`: asserts every row equal to plain batched
    generate (`assert_rows_equal`), returns how many tokens the strategy drafted in all."""
    drafted = 0
    for seed in seeds:
        ids, mask = batch(seed)
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False)
        ours = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                              assistant_model=strategy)
        assert_rows_equal(model, plain, ours, ids, mask)
        drafted += strategy.last_stats.drafted
    return drafted

@pytest.mark.parametrize("name", ["ngram", "ngram_defaults", "nasd", "draft_model", "draft_model_lookup",
                                  "medusa_chain", "medusa_tree", "hydra_dynamic", "hydra_gated", "eagle_chain",
                                  "eagle_tree"])
def test_greedy_rows_equal_plain_batched_generate(target, name):
    make = strategies(target)[name]
    drafted = 0
    for seed in range(3):
        ids, mask = batch(seed)
        plain = target.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False)
        strategy = make()
        ours = target.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                               assistant_model=strategy)
        assert_rows_equal(target, plain, ours, ids, mask)
        stats = strategy.last_stats
        assert len(stats.rows) == 4 and stats.new_tokens == sum(row.new_tokens for row in stats.rows)
        drafted += stats.drafted
    assert drafted > 0  # the batch gate drafts first, then measures


def test_rows_finish_at_different_steps_and_eos_inside_drafts():
    """EOS is made a token that some rows' outputs contain (repeated, so lookup drafts carry it) and others do
    not: those rows end early, inside accepted drafts, the rest run on; finished rows are padded as plain batched
    generate pads them."""
    model = make_llama(eos_token_id=None)
    ids, mask = batch(5)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False)[:, ids.shape[1]:]
    counts = [set(row.tolist()) for row in free]
    eos = next(t for t in free[0, 5:].tolist() if any(t not in c for c in counts[1:]))
    model.generation_config.eos_token_id = eos
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False)
    ended = (plain[:, ids.shape[1]:] == eos).any(dim=1)
    assert ended.any() and not ended.all()
    strategy = hf_specdec.NGramStrategy(skip_unprofitable_drafts=False)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, assistant_model=strategy)
    assert_rows_equal(model, plain, ours, ids, mask)
    assert strategy.last_stats.accepted > 0


def test_padding_at_batch_size_one(target):
    ids, mask = left_padded([repetitive_prompt(1)[0], torch.arange(2, 40)])
    ids, mask = ids[:1], mask[:1]  # one row with left padding
    assert not bool(mask.all())
    plain = target.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False)
    ours = target.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                           assistant_model=hf_specdec.NGramStrategy(skip_unprofitable_drafts=False))
    assert torch.equal(plain, ours)


def test_each_rows_cache_equals_a_fresh_forward(target):
    ids, mask = batch(2)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                          return_dict_in_generate=True,
                          assistant_model=draft_strategy(make_llama(layers=1, seed=1)))
    cache = output_cache(out)
    for b in range(ids.shape[0]):
        tokens = out.sequences[b, int((mask[b] == 0).sum()):]
        tokens = tokens[: int((tokens != 0).nonzero().max()) + 1]  # drop the right padding of an early end
        fresh = output_cache(target(tokens[None, :-1], use_cache=True))
        live = tokens.numel() - 1
        for ours, theirs in zip(cache.layers, fresh.layers):
            torch.testing.assert_close(ours.keys[b, :, -live:], theirs.keys[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(ours.values[b, :, -live:], theirs.values[0], atol=1e-5, rtol=1e-4)


def test_a_wide_draft_does_not_force_a_wide_verify():
    """choose_width: when a wide verify costs much more than a narrow one, one row's long draft is cut."""
    from hf_specdec.engine.drafts import RowDraft
    from hf_specdec.engine.run import Row
    from hf_specdec.engine.width import VerifyCosts, choose_width

    rows = [Row(None, torch.zeros(1, 3, dtype=torch.long), 0, [0, 0, 0], acceptance=a) for a in (0.9, 0.1, 0.1, 0.1)]
    cpu = torch.device("cpu")
    drafts = [RowDraft.of(hf_specdec.Draft(torch.arange(8)), 8, cpu)] + [RowDraft.of(hf_specdec.Draft.empty(), 0, cpu)] * 3
    cheap, dear = VerifyCosts(4), VerifyCosts(4)
    cheap.record(0, 1.0), cheap.record(8, 1.05)
    dear.record(0, 1.0), dear.record(8, 4.0)
    assert choose_width(rows, drafts, cheap) == 8
    assert choose_width(rows, drafts, dear) < 8  # cut short (to the widths the measured costs still pay for)
    rows[0].acceptance = 0.05
    assert choose_width(rows, drafts, dear) == 0  # a draft that is rarely right is not worth any width


# ---- sampling ------------------------------------------------------------------------------------------------------
def first_pairs(model, ids, mask, strategy_factory, seed, draws=300):
    """(1st, 2nd) new tokens of every row of `draws` batched samples, pooled over rows of the same prompt."""
    from collections import Counter

    torch.manual_seed(seed)
    pairs = [Counter() for _ in range(ids.shape[0])]
    for _ in range(draws):
        strategy = None if strategy_factory is None else strategy_factory()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=True, top_k=0,
                             assistant_model=strategy)
        for b in range(ids.shape[0]):
            pairs[b][tuple(out[b, ids.shape[1] : ids.shape[1] + 2].tolist())] += 1
    return pairs


@pytest.mark.parametrize("name", ["ngram", "draft_model"])
def test_batched_sampling_matches_plain(small_vocab_model, name):  # noqa: F811
    ids, mask = left_padded([PROMPT[0], PROMPT[0, 5:], PROMPT[0, 2:], PROMPT[0, 9:]])
    small_draft = lambda: draft_strategy(make_llama(vocab_size=8, layers=1, hidden=16, seed=12, logit_scale=3.0,
                                                    eos_token_id=None), num_speculative_tokens=2)
    factory = (lambda: hf_specdec.NGramStrategy(num_speculative_tokens=2, skip_unprofitable_drafts=False)
               if name == "ngram" else small_draft())
    plain = first_pairs(small_vocab_model, ids, mask, None, seed=1)
    ours = first_pairs(small_vocab_model, ids, mask, factory, seed=2)
    pvalues = [homogeneity_pvalue(a, b) for a, b in zip(plain, ours)]
    assert min(pvalues) * len(pvalues) > 1e-3, pvalues


def test_num_return_sequences_samples_match_plain(small_vocab_model):  # noqa: F811
    from collections import Counter

    def pairs(strategy_factory, seed):
        torch.manual_seed(seed)
        counts = Counter()
        for _ in range(300):
            strategy = None if strategy_factory is None else strategy_factory()
            out = small_vocab_model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=3,
                                             do_sample=True, top_k=0, num_return_sequences=4,
                                             assistant_model=strategy)
            assert out.shape[0] == 4
            counts.update(tuple(row[PROMPT.shape[1] : PROMPT.shape[1] + 2].tolist()) for row in out)
        return counts

    factory = lambda: hf_specdec.NGramStrategy(num_speculative_tokens=2, skip_unprofitable_drafts=False)
    assert homogeneity_pvalue(pairs(None, 1), pairs(factory, 2)) > 1e-3


def test_pipeline_with_a_batch():
    from transformers import pipeline

    from hf_specdec.tiny_models import byte_tokenizer

    tokenizer = byte_tokenizer()
    tokenizer.padding_side = "left"
    model = tiny_random_llama(257, eos_token_id=256, pad_token_id=256, bos_token_id=256, seed=2, logit_scale=3.0)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, batch_size=4)
    prompts = ["def f(x):\n    return x", "hello hello", "a b c a b", "x = 1\ny = 2\nx = 1\n"]
    plain = pipe(prompts, max_new_tokens=12, do_sample=False)
    ours = pipe(prompts, max_new_tokens=12, do_sample=False,
                assistant_model=hf_specdec.NGramStrategy(skip_unprofitable_drafts=False))
    assert [p[0]["generated_text"] for p in plain] == [o[0]["generated_text"] for o in ours]
