"""End to end: with sampling, speculative decoding must produce the target's output distribution.

The first new token comes from the prefill (a plain step), so the tokens that go through the verifier are the 2nd and
3rd; their joint distribution is compared with plain sampling by a chi-square test of homogeneity.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import draft_strategy, make_llama
from scipy.stats import chi2_contingency

import hf_specdec
import hf_specdec.engine.verification
import hf_specdec.verify
from hf_specdec.distilled_draft import set_draft_vocab

SAMPLES = 1200
VOCAB = 8
PROMPT = torch.arange(VOCAB).repeat(3)[None]  # every token occurs, so the n-gram drafter always proposes t + 1


@pytest.fixture(scope="module")
def small_vocab_model():
    return make_llama(vocab_size=VOCAB, layers=1, hidden=16, seed=11, logit_scale=1.0, eos_token_id=None)


def sample_pairs(model, strategy=None, seed=0, prompt: torch.LongTensor = PROMPT) -> Counter:
    """(1st, 2nd) new tokens of SAMPLES sampled continuations of `prompt` (an encoder-decoder's source)."""
    torch.manual_seed(seed)
    pairs = Counter()
    for _ in range(SAMPLES):
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3, do_sample=True, top_k=0,
                             assistant_model=strategy)
        pairs[tuple(out[0, -3:-1].tolist())] += 1  # (1st new token, 1st verified token)
    return pairs


def homogeneity_pvalue(a: Counter, b: Counter, min_count: int = 10) -> float:
    """Chi-square test that two samples of (2nd, 3rd) token pairs come from one distribution.

    Two statistics, Bonferroni-combined: the joint over all pairs (rare cells pooled), and the rate of the event
    "2nd token == 1st token + 1" -- the n-gram drafter's proposal here, which a wrong resample step over-weights.
    """
    cells = sorted(set(a) | set(b))
    common = [c for c in cells if a[c] + b[c] >= min_count]
    rare = [c for c in cells if a[c] + b[c] < min_count]
    joint = [[a[c] for c in common] + [sum(a[c] for c in rare)], [b[c] for c in common] + [sum(b[c] for c in rare)]]
    if not rare:
        joint = [row[:-1] for row in joint]

    def agreement(counts: Counter) -> list[int]:
        hits = sum(n for (first, second), n in counts.items() if second == (first + 1) % VOCAB)
        return [hits, sum(counts.values()) - hits]

    pvalues = [chi2_contingency(joint).pvalue, chi2_contingency([agreement(a), agreement(b)]).pvalue]
    return min(1.0, 2 * min(pvalues))


@pytest.fixture(scope="module")
def plain_pairs(small_vocab_model):
    return sample_pairs(small_vocab_model, seed=1)


def random_heads(token_conditioned: bool) -> hf_specdec.MedusaHeads:
    """Random Medusa (or token-conditioned) heads for the small-vocabulary model, so the tree holds varied tokens."""
    heads = hf_specdec.MedusaHeads(hf_specdec.MedusaHeadsConfig(16, VOCAB, num_heads=2,
                                                                token_conditioned=token_conditioned))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return heads


def strategies():
    draft = make_llama(vocab_size=VOCAB, layers=1, hidden=16, seed=12, logit_scale=3.0, eos_token_id=None)
    vocab_draft = make_llama(vocab_size=VOCAB, layers=1, hidden=16, seed=12, logit_scale=3.0, eos_token_id=None)
    set_draft_vocab(vocab_draft, torch.tensor([0, 2, 3, 5, 6]))  # q = 0 off these: the residual must cover them
    return {
        "ngram": hf_specdec.NGramStrategy(num_speculative_tokens=2, skip_unprofitable_drafts=False),
        "draft_model": draft_strategy(draft, num_speculative_tokens=2),
        "draft_model_vocab": draft_strategy(vocab_draft, num_speculative_tokens=2),
        "medusa_tree": hf_specdec.MedusaStrategy(random_heads(False), tree=[[0], [1], [0, 0], [1, 0], [0, 1]]),
        "hydra_dynamic_tree": hf_specdec.MedusaStrategy(random_heads(True), tree="dynamic", tree_nodes=5,
                                                        tree_width=2),
        "eagle_chain": hf_specdec.EagleStrategy(random_drafter(), tree=None, depth=2, lookup_min_ngram=0),
        "eagle_tree": hf_specdec.EagleStrategy(random_drafter(), tree_nodes=5, tree_width=2, depth=2,
                                               lookup_min_ngram=0),
    }


def random_drafter() -> hf_specdec.EagleDrafter:
    """A random EAGLE drafter for the small-vocabulary model (scaled up, so its drafts vary)."""
    torch.manual_seed(6)
    drafter = hf_specdec.EagleDrafter(hf_specdec.EagleDrafterConfig(16, VOCAB, intermediate_size=32,
                                                                     num_attention_heads=2, num_key_value_heads=1))
    with torch.no_grad():
        for parameter in drafter.parameters():
            parameter.mul_(3.0)
    return drafter


@pytest.mark.parametrize("name", ["ngram", "draft_model", "draft_model_vocab", "medusa_tree", "hydra_dynamic_tree",
                                  "eagle_chain", "eagle_tree"])
def test_sampling_matches_plain(small_vocab_model, plain_pairs, name):
    strategy = strategies()[name]
    pairs = sample_pairs(small_vocab_model, strategy, seed=2)
    assert strategy.last_stats.lossless
    assert homogeneity_pvalue(plain_pairs, pairs) > 1e-3


def test_broken_resample_step_is_caught(small_vocab_model, plain_pairs, monkeypatch):
    """Drawing the correction from p instead of norm(max(0, p - q)) over-weights drafted tokens: the same test
    must reject it decisively, or it could not have caught anything."""
    monkeypatch.setattr(hf_specdec.verify, "residual_distribution", lambda p_row, q_row: p_row)
    pairs = sample_pairs(small_vocab_model, strategies()["ngram"], seed=2)
    assert homogeneity_pvalue(plain_pairs, pairs) < 1e-4


def test_broken_tree_residual_is_caught(small_vocab_model, plain_pairs, monkeypatch):
    """A tree verifier that falls back to p instead of the residual after rejecting the drafted children
    over-weights them; the test must reject it for the tree strategies too."""

    def without_residual(tree, node_tokens, p, generator=None):
        tokens, children = node_tokens.tolist(), tree.children()
        path, row = [], 0
        while True:
            accepted = next((c for c in children[row] if float(torch.rand(())) < float(p[row, tokens[c]])), None)
            if accepted is None:
                return path, int(torch.multinomial(p[row], 1))
            path.append(accepted)
            row = 1 + accepted

    monkeypatch.setattr(hf_specdec.engine.verification, "sampling_tree_verify", without_residual)
    pairs = sample_pairs(small_vocab_model, strategies()["hydra_dynamic_tree"], seed=2)
    assert homogeneity_pvalue(plain_pairs, pairs) < 1e-4


def test_typical_acceptance_is_labelled_lossy(small_vocab_model):
    strategy = hf_specdec.NGramStrategy(verification="typical", skip_unprofitable_drafts=False)
    with pytest.warns(UserWarning, match="LOSSY"):
        small_vocab_model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=5, do_sample=True,
                                  assistant_model=strategy)
    assert strategy.lossless is False and strategy.last_stats.lossless is False
