"""Records the target's plain greedy outputs and its top-k tokens at every generated position (not a test).

The recording lets `benchmarks/replay_drafters.py` replay n-gram drafters offline in seconds: a greedy draft is
accepted exactly while it matches the recorded output, and NASD's `top_k_filler` sees the recorded top-k.

    python benchmarks/record_greedy.py --out results/greedy_record.json     # core benchmark prompts, 128 tokens
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hf_specdec.data import load_humaneval, load_mtbench_prose
from hf_specdec.models import load_smollm2, load_smollm2_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=int, default=20)
    parser.add_argument("--prose", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/greedy_record.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2(), load_smollm2_tokenizer()
    sets = {"code": load_humaneval(limit=args.code), "prose": load_mtbench_prose(tokenizer)[: args.prose]}
    records = []
    for dataset, prompts in sets.items():
        for prompt in prompts:
            input_ids = tokenizer(prompt.text, return_tensors="pt").input_ids
            out = model.generate(input_ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 return_dict_in_generate=True, output_scores=True)
            top_k = torch.cat(out.scores).topk(args.top_k, dim=-1).indices  # [new, k]
            records.append({"dataset": dataset, "id": prompt.id, "prompt": input_ids[0].tolist(),
                            "output": out.sequences[0, input_ids.shape[1]:].tolist(), "top_k": top_k.tolist()})
            print(f"{dataset}/{prompt.id}: {len(records[-1]['output'])} tokens", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"vocab_size": model.config.vocab_size, "records": records}))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
