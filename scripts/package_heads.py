"""Rewrites the committed heads folders (heads/*-smollm2-135m) as strategy folders: the heads, the strategy config
of the fastest lossless setting measured for them, custom_generate/ and a model card with the measured numbers.

    python scripts/package_heads.py
"""

from __future__ import annotations

from pathlib import Path

import hf_specdec
from hf_specdec.models import load_smollm2

ROOT = Path(__file__).resolve().parents[1] / "heads"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Prompt lookup in front of the heads, top-1 chain: the fastest lossless setting in docs/medusa.md.
FASTEST = {"tree": None, "lookup_min_ngram": 2, "num_speculative_tokens": 10}
MEASURED = {  # docs/medusa.md; SmolLM2-135M-Instruct fp32, CPU, greedy, 128 new tokens, outputs identical to plain
    "medusa-smollm2-135m": {
        "hf-specdec demo: speedup vs plain, code / prose (2 + 2 prompts, 96 tokens)": "1.87x / 1.34x",
        "speedup vs plain, HumanEval 0-19 (AMD EPYC, 2 threads)": "2.39x (chain + prompt lookup)",
        "speedup vs plain, MT-Bench prose 20 (AMD EPYC, 2 threads)": "1.64x (chain + prompt lookup)",
        "mean accepted length, heads alone, chain / default tree (code)": "1.44 / 1.64",
    },
    "hydra-smollm2-135m": {
        "hf-specdec demo: speedup vs plain, code / prose (2 + 2 prompts, 96 tokens)": "2.00x / 1.34x",
        "mean accepted length, heads alone, chain / default tree / dynamic-32 (code)": "1.65 / 1.83 / 2.07",
        "mean accepted length, heads alone, chain / default tree / dynamic-32 (prose)": "1.45 / 1.65 / 1.87",
    },
}


def main() -> None:
    target = load_smollm2()
    for name, metrics in MEASURED.items():
        folder = ROOT / name
        strategy = hf_specdec.MedusaStrategy(hf_specdec.MedusaHeads.from_pretrained(folder), **FASTEST)
        strategy.save_pretrained(folder, target=target, base_model=BASE_MODEL, metrics=metrics)
        print(f"wrote {folder}")


if __name__ == "__main__":
    main()
