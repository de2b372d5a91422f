"""What a useless draft costs: an untrained truncated copy of the target (its first layers, shared embeddings and
LM head) drafts for DraftModelStrategy and for Transformers' own assisted generation, vs plain generate.

Real target (SmolLM2-135M-Instruct, fp32, CPU, `optimize_for_cpu` on target and draft), greedy, interleaved per
prompt after a warm-up; every output is checked against plain generate.

    python benchmarks/bad_draft_benchmark.py --code 4 --prose 4 --layers 2
"""

from __future__ import annotations

import argparse
import copy

import torch

import hf_specdec
from hf_specdec.benchmarking import interleaved_runs, print_table, summarise
from hf_specdec.cpu_speedups import optimize_for_cpu
from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer


def truncated_copy(model, layers: int):
    """The target's first `layers` decoder layers with its embeddings and LM head: a draft that agrees rarely."""
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:layers]
    draft.config.num_hidden_layers = layers
    return draft.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=int, default=4)
    parser.add_argument("--prose", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    draft = truncated_copy(model, args.layers)
    optimize_for_cpu(model)
    optimize_for_cpu(draft)
    methods = {
        "plain": lambda: {},
        "transformers-assisted": lambda: {"assistant_model": draft},
        "draft-model": lambda: {"assistant_model": hf_specdec.DraftModelStrategy(draft)},
        "draft-model-ungated": lambda: {"assistant_model": hf_specdec.DraftModelStrategy(
            draft, skip_unprofitable_drafts=False)},
    }
    sets = {"code": load_humaneval(limit=args.code), "prose": load_mtbench_prose(tokenizer)[: args.prose]}
    rows = interleaved_runs(model, tokenizer, sets, methods, args.max_new_tokens)
    for dataset in sets:
        print_table(f"{dataset}: draft = first {args.layers} layers of the target, untrained",
                    summarise([r for r in rows if r["dataset"] == dataset]))


if __name__ == "__main__":
    main()
