"""`distribution_match`: do two sets of samples come from the same categorical distribution?

Two-sample chi-square test of homogeneity on a 2 x C contingency table (categories too rare for the test are
pooled into one "other" bin) plus the total-variation distance between the two empirical distributions.
Load it offline from its folder: `evaluate.load("<path>/hf_specdec/eval/metrics/distribution_match")`.
"""

from collections import Counter

import datasets
import evaluate
import numpy as np
from scipy import stats

_DESCRIPTION = """Two-sample test that `predictions` (e.g. tokens sampled with a speculative strategy) and
`references` (tokens sampled with plain decoding) follow the same categorical distribution.

Categories whose pooled count is below `min_count` are merged into one bin, so every expected cell count is
large enough for the chi-square approximation. A small p-value means the distributions differ.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): category ids sampled from the distribution under test.
    references (`list[int]`): category ids sampled from the reference distribution.
    min_count (`int`, default 10): pooled count under which categories go to the "other" bin.
Returns:
    dict with chi2, dof, p_value (1.0 when fewer than 2 bins remain: the test is then uninformative),
    tv_distance (total variation between the two binned empirical distributions), num_categories, num_bins.
Example:
    >>> match = evaluate.load("hf_specdec/eval/metrics/distribution_match")
    >>> match.compute(predictions=[1, 2] * 50, references=[1, 2] * 50)["p_value"]
    1.0
"""

_CITATION = ""


def _table(predictions, references, min_count):
    """Contingency table `[2, bins]` with rare categories pooled into the last column."""
    a, b = Counter(predictions), Counter(references)
    common = sorted(c for c in set(a) | set(b) if a[c] + b[c] >= min_count)
    rare = [c for c in set(a) | set(b) if a[c] + b[c] < min_count]
    rows = [[counts[c] for c in common] + [sum(counts[c] for c in rare)] for counts in (a, b)]
    table = np.asarray(rows, dtype=np.float64)  # [2, len(common) + 1]
    return table[:, table.sum(axis=0) > 0]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DistributionMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, min_count=10):
        if not predictions or not references:
            raise ValueError("distribution_match needs samples in both predictions and references.")
        support = set(predictions) | set(references)
        table = _table(predictions, references, min_count)  # [2, bins]
        frequencies = table / table.sum(axis=1, keepdims=True)
        tv = 0.5 * float(np.abs(frequencies[0] - frequencies[1]).sum())
        if table.shape[1] < 2:
            chi2, dof, p_value = 0.0, 0, 1.0
        else:
            chi2, p_value, dof, _ = stats.chi2_contingency(table, correction=False)
        return {"chi2": float(chi2), "dof": int(dof), "p_value": float(p_value), "tv_distance": float(tv),
                "num_categories": len(support), "num_bins": int(table.shape[1])}
