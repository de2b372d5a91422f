"""Every causal LM type the installed Transformers registers, built as a tiny random model from its own config,
decoded greedily with each strategy and compared with plain `generate`.

Each (type, case) ends as one of: `identical`; `refused` (a ValueError / NotImplementedError raised by hf_specdec
before or while decoding, whose message names the reason); `crash` (any other exception); `different` (output
differs from plain generate); or the whole type is `unbuilt` (its tiny config or its plain generate fails, with the
reason). The sweep catches a Transformers upgrade that breaks a family: run `python -m hf_specdec.arch_sweep`.

Each type runs in a forked child with a timeout, so one that hangs or crashes the interpreter is reported, not fatal.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import traceback
from collections import Counter
from dataclasses import dataclass

import torch

CASES = ("ngram", "nasd", "draft", "batch")
VOCAB = 128
NEW_TOKENS = 40
PROMPT = [5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10, 5, 6, 7, 8]  # repetitive, so lookup drafts get accepted and rejected
SHORT_PROMPT = [11, 12, 5, 6, 7, 8, 9, 10, 5, 6]

# Generic shrinking: any of these config keys present in a type's default config is set to the small value.
_SMALL = {
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "encoder_layers",
                     "num_decoder_layers", "depth"), 2),
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "embed_dim", "emb_dim", "word_embed_proj_dim"), 64),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "decoder_attention_heads",
                     "encoder_attention_heads", "n_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "n_kv_heads", "multi_query_group_num", "num_kv_heads"), 2),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "d_ff", "decoder_ffn_dim", "encoder_ffn_dim",
                     "moe_intermediate_size", "shared_expert_intermediate_size", "ffn_hidden_size",
                     "expert_intermediate_size", "dense_intermediate_size"), 64),
    **dict.fromkeys(("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk", "top_k", "moe_k"), 2),
    # compressed (MLA) attention and partial rotary dimensions
    "kv_lora_rank": 32, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "qk_head_dim": 16, "rotary_dim": 8,
    "head_dim": 16, "vocab_size": VOCAB, "max_position_embeddings": 512, "n_positions": 512,
}
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "sep_token_id",
              "cls_token_id", "mask_token_id", "unk_token_id")


@dataclass
class Outcome:
    status: str  # identical / refused / crash / different / unbuilt
    detail: str = ""


def shrink(config_dict: dict) -> dict:
    """A small version of a config's dict: the `_SMALL` keys, special token ids inside the small vocabulary,
    per-layer lists cut to the layer count, sub-configs (text_config, ...) shrunk the same way."""
    small = {}
    for key, value in config_dict.items():
        if isinstance(value, dict) and key.endswith("config"):
            small[key] = shrink(value)
        elif key in _SMALL and isinstance(value, int) and not isinstance(value, bool):
            small[key] = min(value, _SMALL[key]) if key != "vocab_size" else _SMALL[key]
        elif key in _TOKEN_IDS and isinstance(value, int) and value >= VOCAB:
            small[key] = VOCAB - 1 - _TOKEN_IDS.index(key)
        elif key in _TOKEN_IDS and isinstance(value, list):
            small[key] = [v if v < VOCAB else VOCAB - 1 for v in value if isinstance(v, int)]
        else:
            small[key] = value
    if "kv_lora_rank" in small and "num_attention_heads" in small:  # MLA: every head has its own keys and values
        small["num_key_value_heads"] = small["num_attention_heads"]
        if "head_dim" in small:  # the rotary part's width
            small["head_dim"] = small.get("qk_rope_head_dim", small["head_dim"])
    if isinstance(small.get("per_layer_config"), dict):  # keyed by layer index; the dict round trip made them strings
        small["per_layer_config"] = None
    layers = next((small[k] for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers")
                   if isinstance(small.get(k), int)), None)
    for key, value in list(small.items()):
        if layers and isinstance(value, list) and len(value) > layers and key.endswith(("layer_types", "_pattern",
                                                                                         "layers_block_type")):
            small[key] = value[:layers]
    return small


def build(model_type: str) -> torch.nn.Module:
    """The type's causal LM class on a shrunk copy of its default config, in eval mode, seeded."""
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    default = AutoConfig.for_model(model_type)
    config = type(default)(**shrink(default.to_dict()))
    config._attn_implementation = "sdpa" if getattr(type(default), "_supports_sdpa", True) else "eager"
    class_name = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    model_class = getattr(__import__("transformers", fromlist=[class_name]), class_name)
    torch.manual_seed(0)
    try:
        model = model_class._from_config(config, attn_implementation="sdpa")
    except Exception:  # noqa: BLE001  (types without sdpa)
        torch.manual_seed(0)
        model = model_class._from_config(config, attn_implementation="eager")
    return model.eval()


def plain_and_inputs(model, batch: bool) -> tuple[dict, torch.Tensor]:
    """generate kwargs (greedy, fixed length) and the plain output."""
    if batch:
        pad = 0
        ids = torch.tensor([PROMPT, [pad] * (len(PROMPT) - len(SHORT_PROMPT)) + SHORT_PROMPT])
        mask = (torch.arange(len(PROMPT))[None] >= torch.tensor([[0], [len(PROMPT) - len(SHORT_PROMPT)]])).long()
        kwargs = {"input_ids": ids, "attention_mask": mask, "pad_token_id": pad}
    else:
        kwargs = {"input_ids": torch.tensor([PROMPT])}
    kwargs.update(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    with torch.no_grad():
        plain = model.generate(**kwargs)
    return kwargs, plain


def strategy_for(case: str, model):
    import hf_specdec

    if case in ("ngram", "batch"):
        return hf_specdec.NGramStrategy()
    if case == "nasd":
        return hf_specdec.NASDStrategy()
    return hf_specdec.DraftModelStrategy(copy.deepcopy(model), skip_unprofitable_drafts=False, lookup_min_ngram=0)


def run_case(model, case: str) -> Outcome:
    try:
        kwargs, plain = plain_and_inputs(model, case == "batch")
    except Exception as error:  # noqa: BLE001
        return Outcome("unbuilt", f"plain generate: {type(error).__name__}: {str(error)[:150]}")
    try:
        strategy = strategy_for(case, model)
        with torch.no_grad():
            out = model.generate(**kwargs, assistant_model=strategy)
    except (ValueError, NotImplementedError) as error:
        if _is_ours(error):
            return Outcome("refused", str(error).split(". ")[0][:160])
        return Outcome("crash", f"{type(error).__name__}: {str(error)[:150]} @ {_where(error)}")
    except Exception as error:  # noqa: BLE001
        return Outcome("crash", f"{type(error).__name__}: {str(error)[:150]} @ {_where(error)}")
    if out.shape == plain.shape and torch.equal(out, plain):
        return Outcome("identical")
    if out.shape != plain.shape:
        return Outcome("different", f"shape {tuple(out.shape)} vs plain {tuple(plain.shape)}")
    row, column = (out != plain).nonzero()[0].tolist()
    return Outcome("different", f"row {row} from position {column}: {out[row, column:column + 6].tolist()} vs plain "
                                f"{plain[row, column:column + 6].tolist()}")


def _is_ours(error: BaseException) -> bool:
    """A refusal raised by hf_specdec's own checks (the innermost frame is in hf_specdec)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and "hf_specdec" in frames[-1].filename


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    frame = frames[-1] if frames else None
    return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno}" if frame else "?"


def sweep_type(model_type: str, cases: tuple[str, ...] = CASES) -> dict[str, Outcome]:
    torch.set_num_threads(1)
    try:
        model = build(model_type)
    except Exception as error:  # noqa: BLE001
        reason = Outcome("unbuilt", f"build: {type(error).__name__}: {str(error)[:150]}")
        return dict.fromkeys(cases, reason)
    return {case: run_case(model, case) for case in cases}


def _child(model_type: str, cases: tuple[str, ...], queue) -> None:
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    queue.put(sweep_type(model_type, cases))


def sweep_type_isolated(model_type: str, cases: tuple[str, ...] = CASES, timeout: float = 120.0,
                        ) -> dict[str, Outcome]:
    """`sweep_type` in a forked child: a hang or a hard crash becomes a `crash` outcome."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(model_type, cases, queue))
    process.start()
    try:
        result = queue.get(timeout=timeout)
    except Exception:  # noqa: BLE001  (queue.Empty: timed out or died)
        result = dict.fromkeys(cases, Outcome("crash", f"no result within {timeout:.0f} s (exit {process.exitcode})"))
    process.join(5)
    if process.is_alive():
        process.kill()
    return result


def all_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def sweep(types: list[str], cases: tuple[str, ...] = CASES, jobs: int = 1, timeout: float = 120.0,
          ) -> dict[str, dict[str, Outcome]]:
    import hf_specdec  # noqa: F401  (import before forking)

    if jobs <= 1:
        return {t: sweep_type_isolated(t, cases, timeout) for t in types}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        return dict(zip(types, pool.map(lambda t: sweep_type_isolated(t, cases, timeout), types)))


def summary(results: dict[str, dict[str, Outcome]], cases: tuple[str, ...] = CASES) -> str:
    statuses = ("identical", "refused", "crash", "different", "unbuilt")
    lines = ["| case | " + " | ".join(statuses) + " |", "|---" * (len(statuses) + 1) + "|"]
    for case in cases:
        counts = Counter(r[case].status for r in results.values())
        lines.append(f"| {case} | " + " | ".join(str(counts[s]) for s in statuses) + " |")
    return "\n".join(lines)


def details(results: dict[str, dict[str, Outcome]], cases: tuple[str, ...] = CASES, only_bad: bool = True) -> str:
    lines = []
    for model_type, outcomes in results.items():
        for case in cases:
            outcome = outcomes[case]
            if only_bad and outcome.status == "identical":
                continue
            lines.append(f"{model_type:28s} {case:6s} {outcome.status:9s} {outcome.detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("types", nargs="*", help="model types (default: every registered causal LM)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--all", action="store_true", help="list identical outcomes too")
    args = parser.parse_args(argv)
    cases = tuple(args.cases.split(","))
    results = sweep(args.types or all_types(), cases, args.jobs, args.timeout)
    print(details(results, cases, only_bad=not args.all))
    print(summary(results, cases))


if __name__ == "__main__":
    main()
