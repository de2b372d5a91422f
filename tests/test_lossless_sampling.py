"""End to end, with statistical power: speculative sampling must reproduce plain sampling's distribution exactly.

The target is `position_sensitive_llama(8)`: peaked next-token distributions that depend on positions, with
temperature 0.7, top-k 5, top-p 0.9 and a repetition penalty of 1.3 set. Every test samples N continuations of
`NEW_TOKENS` = 4 new tokens: t1 comes from the prefill, the first verify step drafts t2 and t3 (the budget caps its
draft at 2) and emits t4 as the bonus token when both are accepted (or a correction earlier). Drafts are far from
the target (the draft model is another random `position_sensitive_llama`, random heads and drafters), so a bonus
drawn from q, a residual or acceptance rule with p and q swapped, or scores that skipped a logits processor move the
output distribution by a total variation of 0.05-0.5.

Reference: the EXACT joint distribution of (t1, ..., t4) under plain `generate`, computed from plain generate's own
processed scores (`output_scores`) at every prefix in the support, so only our side is sampled. Checks: (1) no
sample outside that support (top-k/top-p cut tokens have probability 0: exact); (2) a G-test of the joint histogram
and (3) one of the last two tokens' joint histogram (the bonus position and its predecessor), cells with an
expected count under 5 pooled, Bonferroni-combined and rejected below ALPHA.

Power calculation for the sample size (N = 300): the support check is exact, and a bug that puts probability
m > 0 outside the support is missed with probability (1 - m)^N; the bugs above put m = 0.1-0.4 there (a bonus from
q, skipped processors), missed with probability < 1e-13 at N = 300. For bugs inside the support, the G statistic
is approximately non-central chi-square with non-centrality lambda = 2 N KL(p_bug || p) ~ N w^2 (Cohen's w). The
pooled joint has at most ~25 cells at N = 300: at ALPHA / 2 = 5e-4 and df = 25 the critical value is 54.9, and
power 0.99 needs lambda >= 67, i.e. w >= 0.47 at N = 300; the last-pair test (df ~ 15: critical 39.7, lambda 58)
w >= 0.44. A tree verifier that forgets to remove rejected children from the residual moves the joint by
w ~ 0.6 here (p ~ 1e-5 at N = 150 in `scripts/mutation_check.py`'s runs). A correct sampler passes with
probability 1 - ALPHA; the seeds are fixed, so the suite is deterministic.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import draft_strategy
from scipy.stats import chi2

import hf_specdec
from hf_specdec.tiny_models import position_sensitive_llama

VOCAB = 8
PAD = 0
NEW_TOKENS = 4
SAMPLES = 300
ALPHA = 1e-3
SETTINGS = {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "repetition_penalty": 1.3}
NO_PENALTY = {key: value for key, value in SETTINGS.items() if key != "repetition_penalty"}
PROMPT = torch.tensor([[3, 1, 4, 1, 5, 2, 6, 5, 3, 5, 7, 2, 4, 6]])  # every token but 0: n-gram drafts each step
SHORT_PROMPT = torch.tensor([[2, 7, 1, 6, 3, 7, 4]])


@pytest.fixture(scope="module")
def target():
    return position_sensitive_llama(VOCAB, seed=0)


# ---- the reference: plain generate's exact distribution --------------------------------------------------------
@torch.no_grad()
def exact_joint(model, prompt: torch.LongTensor, padding: int = 0, depth: int = NEW_TOKENS,
                settings: dict = SETTINGS) -> dict[tuple, float]:
    """{(t1, ..., t_depth): probability} under plain sampling of `prompt` `[1, n]` (its first `padding` tokens are
    left padding), from plain generate's processed scores at every prefix with a nonzero probability."""
    joint = {(): 1.0}
    for _ in range(depth):
        prefixes = list(joint)
        drawn = torch.tensor(prefixes, dtype=torch.long).view(len(prefixes), -1)  # [P, tokens so far]
        ids = torch.cat([prompt.repeat(len(prefixes), 1), drawn], dim=1)
        mask = torch.ones_like(ids)
        mask[:, :padding] = 0
        out = model.generate(ids, attention_mask=mask, max_new_tokens=1, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=PAD, **settings)
        probs = out.scores[0].softmax(dim=-1)  # [P, V]
        joint = {(*prefix, token): joint[prefix] * float(probs[i, token])
                 for i, prefix in enumerate(prefixes) for token in probs[i].nonzero().flatten().tolist()}
    return joint


def g_test(observed: Counter, expected: dict[tuple, float], samples: int) -> float:
    """p-value of a G-test of `observed` counts against probabilities `expected`, cells with an expected count
    under 5 pooled into one."""
    big = [cell for cell, p in expected.items() if p * samples >= 5]
    small = [cell for cell in expected if cell not in big]
    obs = [observed[cell] for cell in big] + [sum(observed[cell] for cell in small)]
    exp = [expected[cell] * samples for cell in big] + [sum(expected[cell] for cell in small) * samples]
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = 2 * sum(o * torch.log(torch.tensor(o / e)).item() for o, e in zip(obs, exp) if o > 0)
    return float(chi2.sf(stat, max(1, len(exp) - 1)))


def marginal(joint: dict[tuple, float] | Counter, positions: slice) -> dict[tuple, float]:
    out: dict[tuple, float] = Counter()
    for cell, value in joint.items():
        out[cell[positions]] += value
    return out


def assert_follows(observed: Counter, expected: dict[tuple, float]) -> None:
    """The samples follow `expected` exactly: support, then the joint and the last pair by G-tests."""
    outside = {cell: n for cell, n in observed.items() if cell not in expected}
    assert not outside, f"samples plain generate cannot produce (a logits processor skipped?): {outside}"
    samples = sum(observed.values())
    pvalues = [g_test(observed, expected, samples),
               g_test(marginal(observed, slice(-2, None)), marginal(expected, slice(-2, None)), samples)]
    assert min(1.0, 2 * min(pvalues)) > ALPHA, f"p-values {pvalues}: not plain generate's distribution"


# ---- our side: sampled with a strategy -------------------------------------------------------------------------
def sample_rows(model, strategy, prompt: torch.LongTensor, samples: int, seed: int, mask=None,
                chunk: int = 4) -> tuple[torch.LongTensor, int]:
    """(`[samples, NEW_TOKENS]` new tokens, drafted tokens accepted in all), drawn in batches of `chunk`
    `num_return_sequences` rows (each row of the batched engine is an independent draw from the target when the
    engine is right). Small batches: the batched engine drafts only where a wide verify pays, which its cost prior
    denies to wide batches of tiny models."""
    torch.manual_seed(seed)
    mask = torch.ones_like(prompt) if mask is None else mask
    rows, accepted = [], 0
    for start in range(0, samples, chunk):
        n = min(chunk, samples - start)
        out = model.generate(prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS, num_return_sequences=n,
                             assistant_model=strategy, pad_token_id=PAD, **SETTINGS)
        rows.append(out[:, prompt.shape[1]:])
        accepted += strategy.last_stats.accepted
    return torch.cat(rows), accepted


def sample_one_by_one(model, strategy, prompt: torch.LongTensor, samples: int, seed: int) -> torch.LongTensor:
    """`[samples, NEW_TOKENS]` from separate batch-of-one calls (the unbatched path)."""
    torch.manual_seed(seed)
    return torch.cat([model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                     assistant_model=strategy, pad_token_id=PAD, **SETTINGS)[:, prompt.shape[1]:]
                      for _ in range(samples)])


def counts(rows: torch.LongTensor) -> Counter:
    return Counter(tuple(row) for row in rows.tolist())


# ---- drafters far from the target --------------------------------------------------------------------------------
def random_heads(model) -> hf_specdec.MedusaHeads:
    heads = hf_specdec.MedusaHeads(hf_specdec.MedusaHeadsConfig(model.config.hidden_size, VOCAB, num_heads=2))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return heads


def random_drafter(model) -> hf_specdec.EagleDrafter:
    drafter = hf_specdec.EagleDrafter(hf_specdec.EagleDrafterConfig(model.config.hidden_size, VOCAB,
                                                                     intermediate_size=32, num_attention_heads=2,
                                                                     num_key_value_heads=1))
    generator = torch.Generator().manual_seed(2)  # drafts accepted ~45% of the time: the tree verifier is exercised
    with torch.no_grad():
        for parameter in drafter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return drafter


def make_strategy(name: str, model) -> hf_specdec.SpeculativeStrategy:
    if name == "draft_model":  # a chain with q: speculative_sampling_verify's q branch
        return draft_strategy(position_sensitive_llama(VOCAB, seed=1), num_speculative_tokens=2)
    if name == "ngram":  # a chain of point masses (q = None)
        return hf_specdec.NGramStrategy(num_speculative_tokens=2, skip_unprofitable_drafts=False)
    if name == "medusa_tree":  # sampling_tree_verify
        return hf_specdec.MedusaStrategy(random_heads(model), tree=[[0], [1], [0, 0], [1, 0], [0, 1]],
                                         lookup_min_ngram=0, skip_unprofitable_drafts=False)
    if name == "eagle_tree":
        return hf_specdec.EagleStrategy(random_drafter(model), tree_nodes=5, tree_width=2, depth=2,
                                        lookup_min_ngram=0, skip_unprofitable_drafts=False)
    raise ValueError(name)


@pytest.fixture(scope="module")
def reference(target):
    return exact_joint(target, PROMPT)


def test_reference_is_peaked_and_far_from_uniform(reference):
    """The test's premise: the target's joint is concentrated (so q-for-p swaps show) and cut by top-k/top-p."""
    assert len(reference) < 5 ** NEW_TOKENS / 2
    assert max(reference.values()) > 0.05


@pytest.mark.parametrize("name", ["draft_model", "ngram", "medusa_tree", "eagle_tree"])
def test_batched_rows_follow_plain_sampling(target, reference, name):
    """SAMPLES rows of one `num_return_sequences` batch; see the module docstring for the power calculation."""
    strategy = make_strategy(name, target)
    rows, accepted = sample_rows(target, strategy, PROMPT, SAMPLES, seed=1)
    assert accepted > SAMPLES / 10  # drafts were verified, not just plain steps
    assert_follows(counts(rows), reference)


@pytest.mark.parametrize("name", ["draft_model", "medusa_tree"])
def test_one_prompt_at_a_time_follows_plain_sampling(target, reference, name):
    """The batch-of-one path, SAMPLES // 2 calls (G-tests: power 0.99 at w >= 0.66; the support check as above)."""
    strategy = make_strategy(name, target)
    rows = sample_one_by_one(target, strategy, PROMPT, SAMPLES // 2, seed=2)
    assert_follows(counts(rows), reference)


def test_padded_batch_follows_plain_sampling(target):
    """Rows of two prompts of different lengths in left-padded batches: each row follows its own prompt's
    distribution (computed with the same padding). No repetition penalty: see the next test."""
    padding = PROMPT.shape[1] - SHORT_PROMPT.shape[1]
    short = torch.cat([torch.full((1, padding), PAD), SHORT_PROMPT], dim=1)
    ids = torch.cat([PROMPT, short]).repeat(SAMPLES // 2, 1)  # [SAMPLES, n], long and short rows alternating
    mask = (torch.arange(ids.shape[1]) >= torch.tensor([0, padding]).repeat(SAMPLES // 2)[:, None]).long()
    strategy = make_strategy("draft_model", target)
    torch.manual_seed(3)
    rows, accepted = [], 0
    for i in range(0, SAMPLES, 4):
        rows.append(target.generate(ids[i:i + 4], attention_mask=mask[i:i + 4], max_new_tokens=NEW_TOKENS,
                                    assistant_model=strategy, pad_token_id=PAD, **NO_PENALTY)[:, ids.shape[1]:])
        accepted += strategy.last_stats.accepted
    rows = torch.cat(rows)
    assert accepted > SAMPLES / 10
    assert_follows(counts(rows[0::2]), exact_joint(target, PROMPT, settings=NO_PENALTY))
    assert_follows(counts(rows[1::2]), exact_joint(target, short, padding=padding, settings=NO_PENALTY))


def test_padded_batch_with_a_repetition_penalty(target):
    """Transformers gives RepetitionPenaltyLogitsProcessor a per-row `prompt_ignore_length` [B] (the left padding);
    the engine calls processors one row at a time, each row with its own entry (engine.scoring.row_processors)."""
    padding = PROMPT.shape[1] - SHORT_PROMPT.shape[1]
    ids = torch.cat([PROMPT, torch.cat([torch.full((1, padding), PAD), SHORT_PROMPT], dim=1)])
    mask = (torch.arange(ids.shape[1]) >= torch.tensor([0, padding])[:, None]).long()
    greedy = {"do_sample": False, "repetition_penalty": 1.3, "max_new_tokens": 6, "pad_token_id": PAD}
    plain = target.generate(ids, attention_mask=mask, **greedy)
    ours = target.generate(ids, attention_mask=mask, assistant_model=make_strategy("draft_model", target), **greedy)
    assert torch.equal(ours, plain)
