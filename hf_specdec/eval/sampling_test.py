"""Losslessness under sampling, tested statistically.

For a few fixed prefixes, draw many short continuations (`num_tokens` tokens) with plain sampling and with each
method, then compare, per prefix, the distribution of each position's token and of the first two tokens jointly
with a two-sample chi-square test (`distribution_match` metric). The first token comes from the prefill and the
loop drafts at most (tokens still allowed - 1), so drafts are verified from the second token on when at least three
are sampled; a broken verifier shows up there. The p-values of all tests of one method are
combined with Bonferroni's correction (min p times the number of informative tests, those with >= 2 bins after
pooling rare tokens); the method passes when that is >= alpha, and is INCONCLUSIVE when no test was informative
(too few samples for how spread the distribution is) or when no drafted token reached the verifier.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..strategies.ngram import match_suffix
from .config import EvalConfig, MethodSpec, SamplingTestSpec
from .loading import EvalPrompt
from .methods import MethodFactory
from .runner import RecordStore, encode

ENDED = -1  # the position after an EOS (the sample ended early)


def pick_prefixes(prompts: list[EvalPrompt], spec: SamplingTestSpec) -> list[EvalPrompt]:
    """The first `num_prefixes` prompts of each dataset."""
    chosen: dict[str, list[EvalPrompt]] = {}
    for prompt in prompts:
        group = chosen.setdefault(prompt.dataset, [])
        if len(group) < spec.num_prefixes:
            group.append(prompt)
    return [p for group in chosen.values() for p in group]


def _pad(tokens: list[int], length: int, eos: set[int]) -> list[int]:
    """Tokens up to and including the first EOS, then ENDED up to `length`."""
    out = []
    for token in tokens[:length]:
        out.append(token)
        if token in eos:
            break
    return out + [ENDED] * (length - len(out))


def _eos_ids(model: PreTrainedModel) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set() if eos is None else set(eos if isinstance(eos, list) else [eos])


def draw_samples(model: PreTrainedModel, prefix_ids: torch.LongTensor, factory: MethodFactory, spec: MethodSpec,
                 test: SamplingTestSpec, seed: int) -> tuple[list[list[int]], dict[str, int] | None]:
    """`num_samples` continuations of `num_tokens` tokens, and (hf_specdec methods) how many drafted tokens the
    verifier judged. Plain sampling runs as one batch; other methods one sample per call, each with a fresh strategy
    (so each sample's drafter starts from scratch, as a user's single call does)."""
    gen_kwargs = {"do_sample": True, "temperature": test.temperature, "top_p": test.top_p,
                  "max_new_tokens": test.num_tokens}
    eos, n = _eos_ids(model), prefix_ids.shape[1]
    torch.manual_seed(seed)
    if spec.type == "plain":
        out = model.generate(prefix_ids, num_return_sequences=test.num_samples, **gen_kwargs)  # [S, n + T]
        return [_pad(row[n:].tolist(), test.num_tokens, eos) for row in out], None
    samples, counts = [], {"drafted": 0, "accepted": 0}
    for _ in range(test.num_samples):
        kwargs = factory.generate_kwargs(spec)
        out = model.generate(prefix_ids, **gen_kwargs, **kwargs)
        samples.append(_pad(out[0, n:].tolist(), test.num_tokens, eos))
        stats = getattr(kwargs.get("assistant_model"), "last_stats", None)
        if stats is not None:
            counts["drafted"] += stats.drafted
            counts["accepted"] += stats.accepted
    return samples, counts if spec.is_strategy else None


def _suffix_seen(tokens: list[int], size: int) -> bool:
    """True when the last `size` tokens also occur together earlier in `tokens` (an n-gram drafter then drafts)."""
    return match_suffix(list(tokens), size) is not None  # None also when too short to repeat


def cut_point(context: list[int], output: list[int], window: int) -> int:
    """How many tokens of plain's greedy `output` to append to the prompt `context`: the first position from the
    middle on (then before it) whose next greedy token ends a 2-gram (else a 1-gram) seen earlier in the last
    `window` tokens, so the likely first sampled token leads drafters to a draft for the second one; else the
    middle."""
    middle = len(output) // 2
    for size in (2, 1):
        for p in [*range(middle, len(output)), *range(middle - 1, 0, -1)]:
            if _suffix_seen((context + output[: p + 1])[-window:], size):
                return p
    return middle


def prefix_ids_for(prompt: EvalPrompt, tokenizer: PreTrainedTokenizerBase, store: RecordStore, plain_name: str,
                   test: SamplingTestSpec, device: torch.device) -> torch.LongTensor:
    """`[1, <= prefix_tokens]`: the prompt, followed (with `continue_output`) by part of plain's greedy output from
    the speed run (see `cut_point`), cut to its last `prefix_tokens` tokens. Mid-answer prefixes where a copy is
    likely give the drafters something to propose, so the verifier is exercised."""
    ids = encode(tokenizer, prompt.prompt.text, device)  # [1, n]
    plain = store.find("speed", prompt.uid, plain_name) if test.continue_output else None
    if plain is not None and plain["output"]:
        head = plain["output"][: cut_point(ids[0].tolist(), plain["output"], test.prefix_tokens)]
        ids = torch.cat([ids, torch.tensor([head], dtype=ids.dtype, device=device)], dim=-1)
    return ids[:, -test.prefix_tokens:]


def run_sampling_test(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, factory: MethodFactory,
                      prefixes: list[EvalPrompt], methods: list[MethodSpec], config: EvalConfig,
                      store: RecordStore, rank: int = 0, show_progress: bool = True) -> None:
    """Draws and records the samples of every (prefix, method) pair not yet in `store`."""
    test = config.sampling_test
    todo = [(p, m) for p in prefixes for m in methods if not store.done("sample", p.uid, m.name)]
    for prompt, spec in tqdm(todo, desc=f"sampling test [rank {rank}]", position=rank, disable=not show_progress):
        prefix_ids = prefix_ids_for(prompt, tokenizer, store, config.plain_name, test, model.device)
        samples, counts = draw_samples(model, prefix_ids, factory, spec, test, config.seed + prompt.index)
        store.append({"kind": "sample", "uid": prompt.uid, "method": spec.name, "type": spec.type,
                      "dataset": prompt.dataset, "prefix": prefix_ids[0].tolist(), "samples": samples,
                      "verified": counts})


def _features(samples: list[list[int]], base: int) -> dict[str, list[int]]:
    """Per sample: the token at each position, and the first two tokens as one joint category (`base` > every
    token id + 1, the same for both sides of a comparison)."""
    features = {f"token{j + 1}": [s[j] for s in samples] for j in range(len(samples[0]))}
    if len(samples[0]) >= 2:
        features["tokens1-2"] = [(s[0] + 1) * base + (s[1] + 1) for s in samples]
    return features


def compare_samples(metric: Any, plain: list[list[int]], other: list[list[int]], min_count: int) -> list[dict]:
    """One `distribution_match` result per feature (see `_features`); `metric` is the loaded evaluate module."""
    base = max(max(max(s) for s in plain), max(max(s) for s in other)) + 2
    plain_features, other_features = _features(plain, base), _features(other, base)
    return [{"feature": name, **metric.compute(predictions=other_features[name], references=values,
                                               min_count=min_count)}
            for name, values in plain_features.items()]


def summarise_sampling(records: list[dict], plain_name: str, test: SamplingTestSpec, metric: Any) -> list[dict]:
    """Pass/fail per method: all prefixes and features, Bonferroni-combined p-value against `test.alpha`."""
    samples = {(r["uid"], r["method"]): r["samples"] for r in records if r["kind"] == "sample"}
    verified = {(r["uid"], r["method"]): r.get("verified") for r in records if r["kind"] == "sample"}
    methods = sorted({m for _, m in samples if m != plain_name})
    summary = []
    for method in methods:
        tests = []
        for (uid, name), other in samples.items():
            if name == method and (uid, plain_name) in samples:
                for result in compare_samples(metric, samples[(uid, plain_name)], other, test.min_count):
                    tests.append({"uid": uid, **result})
        if not tests:
            continue
        informative = [t for t in tests if t["num_bins"] >= 2]
        counts = [v for (_, m), v in verified.items() if m == method and v is not None]
        drafted = sum(c["drafted"] for c in counts) if counts else None  # None: a built-in method, not counted
        min_p = min(t["p_value"] for t in tests)
        combined = min(1.0, min_p * len(informative)) if informative else 1.0
        passed = combined >= test.alpha
        verdict = "FAIL" if not passed else "PASS" if informative and drafted != 0 else "INCONCLUSIVE"
        summary.append({"method": method, "num_tests": len(tests), "drafted_tokens_verified": drafted, "informative_tests": len(informative),
                        "min_p_value": min_p, "combined_p_value": combined,
                        "max_tv_distance": max(t["tv_distance"] for t in tests), "passed": passed,
                        "verdict": verdict, "alpha": test.alpha, "tests": tests})
    return summary
