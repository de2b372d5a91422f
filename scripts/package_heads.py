"""Rewrites the committed heads folders (heads/*-smollm2-135m) as strategy folders: the heads (or the EAGLE
drafter), the strategy config of the fastest lossless setting measured for them, custom_generate/ and a model card
with the measured numbers. `--eagle DIR` first takes a freshly trained drafter (recipes/train_eagle.py's output,
with its training log and recipe) into heads/eagle-smollm2-135m.

    python scripts/package_heads.py [--eagle artifacts/eagle-smollm2-135m]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import hf_specdec
from hf_specdec.models import load_smollm2

ROOT = Path(__file__).resolve().parents[1] / "heads"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
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


EAGLE = "eagle-smollm2-135m"
EAGLE_MEASURED: dict[str, str] = {}  # docs/eagle.md


def package_eagle(target, trained: Path | None) -> None:
    """heads/eagle-smollm2-135m as a strategy folder with EagleStrategy's defaults (the fastest setting measured)."""
    folder = ROOT / EAGLE
    source = trained if trained is not None else folder
    drafter = hf_specdec.EagleDrafter.from_pretrained(source)
    if trained is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("training_log.jsonl", "recipe.yaml"):
            shutil.copy(trained / name, folder / name)
    hf_specdec.EagleStrategy(drafter).save_pretrained(folder, target=target, base_model=BASE_MODEL,
                                                      metrics=EAGLE_MEASURED or None)
    print(f"wrote {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eagle", type=Path, help="a trained EAGLE drafter folder to take into heads/")
    args = parser.parse_args()
    target = load_smollm2()
    if args.eagle is not None or (ROOT / EAGLE).is_dir():
        package_eagle(target, args.eagle)
    for name, metrics in MEASURED.items():
        folder = ROOT / name
        strategy = hf_specdec.MedusaStrategy(hf_specdec.MedusaHeads.from_pretrained(folder))  # defaults: the fastest
        strategy.save_pretrained(folder, target=target, base_model=BASE_MODEL, metrics=metrics)
        print(f"wrote {folder}")


if __name__ == "__main__":
    main()
