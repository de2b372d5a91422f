"""Stops that land strictly inside an emitted chunk, and position ids, on a target that notices them.

The target is `position_sensitive_llama`: peaked outputs (greedy choices with wide top-2 gaps, so exact equality
with plain `generate` is not a matter of near-ties) that change with a position shifted by one. Every comparison
is exact (`torch.equal`), with no tolerance.

"Strictly inside a chunk": the stop token was emitted by a verify step that would have emitted more tokens after it
(accepted drafted tokens, or the bonus/correction token), which the stop must drop. Checked from the statistics:
a step emits `accepted + 1` tokens unless a stop cuts it, so a row's last step was cut exactly when its emitted
total is one short of `accepted + verify_steps` (`cut_inside_a_chunk`).
"""

from __future__ import annotations

import pytest
import torch
from conftest import draft_strategy

import hf_specdec
from hf_specdec.tiny_models import CHAR_VOCAB, char_tokenizer, position_sensitive_llama

VOCAB = 16
PAD = 0


@pytest.fixture(scope="module")
def target():
    return position_sensitive_llama(VOCAB, seed=3)


def cut_inside_a_chunk(stats) -> bool:
    """The last verify step emitted fewer tokens than it accepted + 1: a stop dropped the rest of its chunk."""
    return sum(stats.accepted_lengths) == stats.accepted + stats.verify_steps - 1


def random_heads(model, seed: int = 5) -> hf_specdec.MedusaHeads:
    heads = hf_specdec.MedusaHeads(hf_specdec.MedusaHeadsConfig(model.config.hidden_size, model.config.vocab_size,
                                                                num_heads=3))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return heads


TREE = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]]


def strategies(model) -> dict:
    return {
        "self_draft_chain": lambda: draft_strategy(model, num_speculative_tokens=3),  # greedy: accepts everything
        "other_draft_chain": lambda: draft_strategy(position_sensitive_llama(VOCAB, seed=4), num_speculative_tokens=3),
        "medusa_tree": lambda: hf_specdec.MedusaStrategy(random_heads(model), tree=TREE, lookup_min_ngram=0,
                                                        skip_unprofitable_drafts=False),
    }


def prompts(count: int = 3) -> list[torch.LongTensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(1, VOCAB, (1, 6 + 3 * i), generator=generator) for i in range(count)]


def left_padded(rows: list[torch.LongTensor]) -> tuple[torch.LongTensor, torch.LongTensor]:
    length = max(row.shape[1] for row in rows)
    ids = torch.cat([torch.cat([torch.full((1, length - row.shape[1]), PAD), row], dim=1) for row in rows])
    mask = torch.cat([(torch.arange(length) >= length - row.shape[1]).long()[None] for row in rows])
    return ids, mask


def plain_scores_gap(model, ids, mask, **settings) -> float:
    """The smallest top-2 gap of plain greedy generate's scores along its own path: how far from a tie it is."""
    out = model.generate(ids, attention_mask=mask, output_scores=True, return_dict_in_generate=True, **settings)
    top2 = torch.stack(out.scores).topk(2, dim=-1).values  # [T, B, 2]
    return float((top2[..., 0] - top2[..., 1]).min())


# ---- stops inside a chunk --------------------------------------------------------------------------------------
def stops_inside(model, name: str, ids, mask, eos_candidates) -> int:
    """For each EOS candidate: our output must equal plain greedy generate's; returns how many candidates stopped
    some row strictly inside an emitted chunk."""
    inside = 0
    for eos in eos_candidates:
        settings = {"max_new_tokens": 14, "do_sample": False, "eos_token_id": eos, "pad_token_id": PAD}
        plain = model.generate(ids, attention_mask=mask, **settings)
        strategy = strategies(model)[name]()
        ours = model.generate(ids, attention_mask=mask, assistant_model=strategy, **settings)
        assert torch.equal(ours, plain), (name, eos)
        rows = strategy.last_stats.rows or [strategy.last_stats]
        inside += any(cut_inside_a_chunk(stats) for stats in rows)
    return inside


@pytest.mark.parametrize("name", ["self_draft_chain", "medusa_tree"])
def test_eos_inside_a_chunk_one_prompt(target, name):
    prompt = prompts()[1]
    free = target.generate(prompt, max_new_tokens=14, do_sample=False, eos_token_id=None, pad_token_id=PAD)
    candidates = sorted(set(free[0, prompt.shape[1]:].tolist()))
    assert stops_inside(target, name, prompt, torch.ones_like(prompt), candidates) > 0


@pytest.mark.parametrize("name", ["self_draft_chain"])
def test_eos_inside_a_chunk_padded_batch(target, name):
    """Chains only: a batch cuts drafts to the verify width it measures pays, so with random heads whether a tree
    row's EOS lands inside a chunk depends on timings (tree rows are compared with plain generate below)."""
    ids, mask = left_padded(prompts())
    free = target.generate(ids, attention_mask=mask, max_new_tokens=14, do_sample=False, eos_token_id=None,
                           pad_token_id=PAD)
    candidates = sorted(set(free[:, ids.shape[1]:].flatten().tolist()))
    assert stops_inside(target, name, ids, mask, candidates) > 0


def test_eos_inside_a_chunk_is_seen_by_a_step_listener(target):
    """The same fact from the step events: the chunk that ends with EOS was cut short of accepted + 1 tokens."""
    prompt = prompts()[1]
    free = target.generate(prompt, max_new_tokens=14, do_sample=False, eos_token_id=None, pad_token_id=PAD)
    new = free[0, prompt.shape[1]:].tolist()
    # chunks of the self-draft (K = 3, all accepted): t1 from the prefill, then 4 tokens per step
    eos = next(token for j, token in enumerate(new) if j % 4 in (1, 2, 3) and token not in new[:j])
    strategy = strategies(target)["self_draft_chain"]()
    events = []
    strategy.step_listeners.append(events.append)
    ours = target.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=14, do_sample=False,
                           eos_token_id=eos, pad_token_id=PAD, assistant_model=strategy)
    assert torch.equal(ours, target.generate(prompt, max_new_tokens=14, do_sample=False, eos_token_id=eos,
                                             pad_token_id=PAD))
    last = events[-1]
    assert last.emitted[-1] == eos and len(last.emitted) < last.num_accepted + 1


@pytest.mark.parametrize("batch", [False, True])
def test_stop_string_inside_a_chunk(batch):
    """A two-character stop string whose last character is drafted and accepted in the middle of a chunk."""
    tokenizer = char_tokenizer()
    model = position_sensitive_llama(CHAR_VOCAB, seed=2, pad_token_id=PAD)
    texts = ["the cat sat on", "a b c d e f"][: 2 if batch else 1]
    ids, mask = left_padded([torch.tensor([tokenizer.encode(text)]) for text in texts])
    settings = {"max_new_tokens": 14, "do_sample": False, "pad_token_id": PAD, "eos_token_id": None}
    new = model.generate(ids, attention_mask=mask, **settings)[0, ids.shape[1]:].tolist()
    text = tokenizer.decode(new)
    assert len(text) == len(new)  # one printable character per token
    j = next(j for j in range(2, len(new)) if j % 4 in (2, 3) and text[j - 1: j + 1] not in text[:j])
    stop = text[j - 1: j + 1]
    # Each row against plain generate of that row alone: plain batched generate (Transformers 5.24) lets row 0 run
    # past this stop string here, while the same padded row alone stops.
    plain = torch.full((len(texts), ids.shape[1] + settings["max_new_tokens"]), PAD)
    for b in range(len(texts)):
        row = model.generate(ids[b:b + 1], attention_mask=mask[b:b + 1], stop_strings=[stop], tokenizer=tokenizer,
                             **settings)
        plain[b, :row.shape[1]] = row[0]
    strategy = draft_strategy(model, num_speculative_tokens=3)
    ours = model.generate(ids, attention_mask=mask, stop_strings=[stop], tokenizer=tokenizer,
                          assistant_model=strategy, **settings)
    assert torch.equal(ours, plain[:, :ours.shape[1]]) and not plain[:, ours.shape[1]:].any()
    assert tokenizer.decode([t for t in ours[0, ids.shape[1]:].tolist() if t != PAD]).endswith(stop)
    assert cut_inside_a_chunk((strategy.last_stats.rows or [strategy.last_stats])[0])


# ---- positions --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["other_draft_chain", "medusa_tree"])
def test_padded_batch_positions_greedy(target, name):
    """Rows of different lengths: each row's drafts are verified at its own positions. The target's greedy choices
    are far from ties (every top-2 gap along the path > 1e-3, against float differences of ~1e-6 between forward
    shapes), and shifting a position by one changes its output, so a wrong position id shows as a different token,
    not as a near-tie."""
    ids, mask = left_padded(prompts(4))
    settings = {"max_new_tokens": 16, "do_sample": False, "eos_token_id": None, "pad_token_id": PAD}
    plain = target.generate(ids, attention_mask=mask, **settings)
    assert plain_scores_gap(target, ids, mask, **settings) > 1e-3
    strategy = strategies(target)[name]()
    ours = target.generate(ids, attention_mask=mask, assistant_model=strategy, **settings)
    assert strategy.last_stats.drafted > 0  # (how many are accepted depends on the widths the batch measures)
    assert torch.equal(ours, plain)


@pytest.mark.parametrize("name", ["other_draft_chain", "medusa_tree"])
def test_one_prompt_positions_and_cache_greedy(target, name):
    """One prompt at a time: a tree step keeps exactly the accepted path's cache slots (a rejected sibling's slot
    kept shifts every later position and changes the output)."""
    for prompt in prompts(4):
        settings = {"max_new_tokens": 20, "do_sample": False, "eos_token_id": None, "pad_token_id": PAD}
        plain = target.generate(prompt, **settings)
        strategy = strategies(target)[name]()
        ours = target.generate(prompt, attention_mask=torch.ones_like(prompt), assistant_model=strategy, **settings)
        assert torch.equal(ours, plain)


def test_repetition_penalty_sees_each_positions_own_prefix(target):
    """Greedy with a strong repetition penalty: each verified position's penalty must count the drafted tokens
    before it, as plain generate's does."""
    for prompt in prompts(3):
        settings = {"max_new_tokens": 16, "do_sample": False, "eos_token_id": None, "pad_token_id": PAD,
                    "repetition_penalty": 3.0}
        plain = target.generate(prompt, **settings)
        strategy = strategies(target)["self_draft_chain"]()
        ours = target.generate(prompt, attention_mask=torch.ones_like(prompt), assistant_model=strategy, **settings)
        assert torch.equal(ours, plain)
