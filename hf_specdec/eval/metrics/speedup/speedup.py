"""`speedup`: how much faster a method is than a baseline, from paired per-prompt wall times.

Load it offline from its folder: `evaluate.load("<path>/hf_specdec/eval/metrics/speedup")`
(`hf_specdec.eval.metrics.metric_path("speedup")` gives the path).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Speedup of a method over a baseline measured on the same prompts (paired, same process).

- speedup: total baseline seconds / total method seconds (the ratio a user waiting for all prompts sees);
- median, p25, p75, min, max, geometric_mean: of the per-prompt ratios baseline / method;
- tokens_per_second (if `tokens` is given): total tokens / total method seconds.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): the method's wall time per prompt, seconds.
    references (`list[float]`): the baseline's wall time on the same prompts, seconds.
    tokens (`list[int]`, optional): new tokens the method produced per prompt.
Returns:
    dict with speedup, median, p25, p75, min, max, geometric_mean, num_prompts (and tokens_per_second).
Example:
    >>> speedup = evaluate.load("hf_specdec/eval/metrics/speedup")
    >>> speedup.compute(predictions=[1.0, 2.0], references=[2.0, 2.0])["speedup"]
    1.3333333333333333
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Speedup(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references, tokens=None):
        method = np.asarray(predictions, dtype=np.float64)  # [N] seconds
        baseline = np.asarray(references, dtype=np.float64)  # [N] seconds
        if method.size == 0:
            raise ValueError("speedup needs at least one (method, baseline) pair of times.")
        if (method <= 0).any() or (baseline <= 0).any():
            raise ValueError("speedup needs positive wall times; got a time <= 0.")
        ratios = baseline / method  # [N]
        result = {
            "speedup": float(baseline.sum() / method.sum()),
            "median": float(np.median(ratios)),
            "p25": float(np.percentile(ratios, 25)),
            "p75": float(np.percentile(ratios, 75)),
            "min": float(ratios.min()),
            "max": float(ratios.max()),
            "geometric_mean": float(np.exp(np.log(ratios).mean())),
            "num_prompts": int(ratios.size),
        }
        if tokens is not None:
            result["tokens_per_second"] = float(np.sum(tokens) / method.sum())
        return result
