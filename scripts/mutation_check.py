"""Does the default test suite catch a broken sampler? Injects known bugs one at a time and runs the tests meant to
catch each.

Each mutation is an exact text replacement in one library file (the old text must occur exactly once), applied to
a temporary copy of the repository; the named tests run there (`python -m pytest`, PYTHONPATH = the copy, default
markers, so slow tests never count). A mutation is CAUGHT when those tests fail. Before the mutations, the same
tests run once on the unmodified copy, which must pass (else every "caught" would mean nothing).

Run it whenever the verifiers or the engine change:

    python scripts/mutation_check.py              # every mutation, a markdown table at the end
    python scripts/mutation_check.py --list       # names and descriptions
    python scripts/mutation_check.py -m bonus_from_q -m emit_after_stop

When code moves, retarget a mutation's `path` / `old` / `new` (keep each a small, clearly described change); a
mutation whose old text is missing is reported as STALE, not as caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.pyc", "heads", "eval")


@dataclass(frozen=True)
class Mutation:
    name: str
    description: str
    path: str  # file, relative to the repository root
    old: str  # exact text, must occur once
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the root
    select: str | None = None  # a pytest -k expression


SAMPLING = "tests/test_lossless_sampling.py"
VERIFY = "tests/test_verify.py"
TREE = "tests/test_tree.py"
STOPS = "tests/test_stops_and_positions.py"

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "greedy_one_too_many",
        "greedy verify accepts one drafted token more than matched",
        "hf_specdec/verify.py",
        "    num_accepted = int(matches.sum())\n",
        "    num_accepted = min(int(matches.sum()) + 1, draft_tokens.shape[0])\n",
        (VERIFY, STOPS)),
    Mutation(
        "residual_q_minus_p",
        "the correction is drawn from norm(max(0, q - p)) instead of norm(max(0, p - q))",
        "hf_specdec/verify.py",
        "    residual = (p_row - q_row).clamp_min(0)\n",
        "    residual = (q_row - p_row).clamp_min(0)\n",
        (VERIFY, SAMPLING), "verify or (batched and draft_model)"),
    Mutation(
        "accept_q_over_p",
        "a drafted token is accepted with min(1, q/p) instead of min(1, p/q)",
        "hf_specdec/verify.py",
        "    rejected = ~(r * q_x < p_x)\n",
        "    rejected = ~(r * p_x < q_x)\n",
        (VERIFY, SAMPLING), "verify or (batched and draft_model)"),
    Mutation(
        "bonus_from_q",
        "after every drafted token is accepted, the bonus token is drawn from the draft's last distribution q "
        "instead of the target's p",
        "hf_specdec/verify.py",
        "        next_distribution = p[num_drafted]\n",
        "        next_distribution = p[num_drafted] if q is None or num_drafted == 0 else q[num_drafted - 1]\n",
        (VERIFY, SAMPLING), "verify or draft_model"),
    Mutation(
        "sampling_skips_processors",
        "when sampling, verified positions are scored by the raw logits: temperature, top-p, top-k and the "
        "repetition penalty are skipped",
        "hf_specdec/engine/scoring.py",
        "    if len(logits_processor) == 0:\n        return logits.clone()\n    full = ",
        "    if True:\n        return logits.clone()\n    full = ",
        (SAMPLING,), "draft_model or ngram"),
    Mutation(
        "tree_sampling_skips_processors",
        "when sampling a tree, its rows are scored by the raw logits (no logits processors)",
        "hf_specdec/engine/scoring.py",
        "    if len(logits_processor) == 0:\n        return logits.clone()\n    rows = [",
        "    if True:\n        return logits.clone()\n    rows = [",
        (SAMPLING,), "tree"),
    Mutation(
        "processors_skip_drafted_positions",
        "logits processors applied only at the first verified position, raw logits at the drafted ones",
        "hf_specdec/engine/scoring.py",
        "    rows = [logits_processor(full[:, : n + i], logits[i : i + 1].clone()) for i in range(logits.shape[0])]\n",
        "    rows = [logits_processor(full[:, :n], logits[:1].clone())] + [logits[i : i + 1].clone() for i in "
        "range(1, logits.shape[0])]\n",
        (SAMPLING,), "draft_model or ngram"),
    Mutation(
        "processors_see_old_prefix",
        "every verified position's logits processors see the prefix before the draft (a repetition penalty "
        "misses the drafted tokens)",
        "hf_specdec/engine/scoring.py",
        "    rows = [logits_processor(full[:, : n + i], logits[i : i + 1].clone()) for i in range(logits.shape[0])]\n",
        "    rows = [logits_processor(full[:, :n], logits[i : i + 1].clone()) for i in range(logits.shape[0])]\n",
        (SAMPLING, STOPS), "draft_model or ngram or penalty"),
    Mutation(
        "emit_after_stop",
        "tokens after EOS / a stop string inside an accepted draft are emitted too",
        "hf_specdec/engine/emit.py",
        "        count = row_stops.index(True) + 1 if True in row_stops else m\n",
        "        count = m\n",
        (STOPS,), "stop or eos"),
    Mutation(
        "batch_row0_positions",
        "every batch row's verify forward gets row 0's position ids",
        "hf_specdec/engine/step.py",
        "        past = len(row.tokens) - 1\n        positions.append(",
        "        past = len(rows[0].tokens) - 1\n        positions.append(",
        (STOPS, SAMPLING), "position or padded"),
    Mutation(
        "tree_keeps_rejected_sibling",
        "after a tree step the cache keeps the first slots in order instead of the accepted path's (a rejected "
        "sibling's slot survives)",
        "hf_specdec/engine/step.py",
        "([0] + [1 + node for node in v.path])[:count]",
        "list(range(1 + len(v.path)))[:count]",
        (STOPS, TREE), "tree"),
    Mutation(
        "batch_tree_keeps_rejected_sibling",
        "the cache commit never moves a tree path's slots to the front of the step's tail (rejected siblings' "
        "slots are kept in a batch too)",
        "hf_specdec/engine/cache.py",
        "    if any(rows != list(range(len(rows))) for rows in kept):",
        "    if False:",
        (STOPS, "tests/test_batches.py"), "tree or medusa or eagle"),
    Mutation(
        "tree_residual_is_p",
        "a tree node whose children were all rejected draws from p instead of the residual (drafted children "
        "removed)",
        "hf_specdec/tree.py",
        "            current[token] = 0.0\n            total = current.sum()\n            if total",
        "            current = current.clone()\n            total = current.sum()\n            if total",
        (TREE, SAMPLING), "sampling_tree or medusa_tree"),
)


def run_tests(root: Path, mutation: Mutation) -> tuple[int, float, str]:
    """(pytest's exit code, seconds, the last lines of its output) for `mutation`'s tests in `root`."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests]
    if mutation.select:
        command += ["-k", mutation.select]
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    return done.returncode, time.perf_counter() - start, tail


def check(mutation: Mutation, workdir: Path, baseline: bool = False) -> tuple[str, float, str]:
    """Copies the repository, applies `mutation` (unless `baseline`), runs its tests. Returns (verdict, seconds,
    output tail); verdicts: caught, NOT CAUGHT, STALE (old text not found once), ERROR (pytest could not run),
    and for a baseline: passes / FAILS."""
    root = workdir / mutation.name
    shutil.copytree(ROOT, root, ignore=COPY_IGNORE)
    try:
        if not baseline:
            target = root / mutation.path
            text = target.read_text()
            if text.count(mutation.old) != 1:
                return "STALE", 0.0, f"old text found {text.count(mutation.old)} times in {mutation.path}"
            target.write_text(text.replace(mutation.old, mutation.new))
        code, seconds, tail = run_tests(root, mutation)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if baseline:
        return ("passes" if code == 0 else "FAILS"), seconds, tail
    verdict = {0: "NOT CAUGHT", 1: "caught"}.get(code, "ERROR")
    return verdict, seconds, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--mutation", action="append", help="run only these (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmodified run")
    args = parser.parse_args()
    names = {m.name for m in MUTATIONS}
    unknown = set(args.mutation or ()) - names
    if unknown:
        parser.error(f"unknown mutations {sorted(unknown)}; known: {sorted(names)}")
    chosen = [m for m in MUTATIONS if not args.mutation or m.name in args.mutation]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.description} ({m.path}; tests {' '.join(m.tests)} -k {m.select!r})")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        workdir = Path(tmp)
        if not args.no_baseline:  # each distinct test selection once, unmodified
            selections = {(m.tests, m.select): m for m in chosen}
            for m in selections.values():
                verdict, seconds, tail = check(m, workdir, baseline=True)
                print(f"baseline {' '.join(m.tests)} -k {m.select!r}: {verdict} ({seconds:.1f} s)", flush=True)
                if verdict != "passes":
                    print(tail)
                    return 2
        for m in chosen:
            verdict, seconds, tail = check(m, workdir)
            results.append((m, verdict, seconds))
            print(f"{m.name}: {verdict} ({seconds:.1f} s)\n  {tail.replace(chr(10), chr(10) + '  ')}", flush=True)
    print("\n| mutation | description | caught? | seconds |\n|---|---|---|---|")
    for m, verdict, seconds in results:
        print(f"| `{m.name}` | {m.description} | {verdict} | {seconds:.0f} |")
    return 0 if all(verdict == "caught" for _, verdict, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
