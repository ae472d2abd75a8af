"""vlm_sft.evaluation.intervals and the report's per-example values: intervals that mean what they say."""

from __future__ import annotations

import pytest

from vlm_sft.evaluation.intervals import bootstrap_difference, bootstrap_interval
from vlm_sft.evaluation.metrics import HEADLINE, headline_value, score
from vlm_sft.evaluation.report import per_example_values, table_rows


def test_interval_of_a_constant_is_the_constant():
    assert bootstrap_interval([1.0] * 40) == (1.0, 1.0)
    assert bootstrap_interval([]) is None and bootstrap_interval([None, None]) is None


def test_interval_narrows_with_more_examples_and_holds_the_mean():
    small = bootstrap_interval([0.0, 1.0] * 20)  # 40 examples, mean 0.5
    large = bootstrap_interval([0.0, 1.0] * 500)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert 0.25 < small[1] - small[0] < 0.4  # ±1.96 * sqrt(.25 / 40) = ±0.155
    assert large[1] - large[0] < 0.1


def test_weighted_values_and_missing_ones():
    # A ratio of sums (fields matched / fields): example 1 matched 2 of 2, example 2 matched 0 of 6.
    assert bootstrap_interval([1.0, 0.0], [2, 6], resamples=500) == pytest.approx((0.0, 1.0))
    # Half the resamples hold one of each: their value is 2 / 8 (weighted), not 1 / 2, and that is the median.
    assert bootstrap_interval([1.0, 0.0], [2, 6], level=0.01) == pytest.approx((0.25, 0.25))
    assert bootstrap_interval([1.0, 0.0], level=0.01) == pytest.approx((0.5, 0.5))
    assert bootstrap_interval([None, 3.0, 3.0]) == (3.0, 3.0)  # an example without a value is left out


def test_difference_is_paired():
    base = [0.0, 1.0] * 20
    tuned = [1.0] * 40
    low, high = bootstrap_difference(tuned, base)
    assert low < 0.5 < high and high - low < 0.4
    # the same answers: no difference on any resample, however the examples vary
    assert bootstrap_difference(base, base) == (0.0, 0.0)
    with pytest.raises(ValueError, match="paired"):
        bootstrap_difference([1.0], [1.0, 0.0])


def test_difference_on_few_examples_is_wide():
    """+0.93 and +0.03 on 40 examples are not read alike: one interval excludes 0, the other does not."""
    base = [0.0] * 40
    big = bootstrap_difference([1.0] * 37 + [0.0] * 3, base)
    small = bootstrap_difference([1.0] + [0.0] * 39, base)
    assert big[0] > 0.8 and small[0] <= 0.0 < small[1]


def test_per_example_values_average_to_the_report_metrics():
    references = ['{"g": "closed", "h": false}', '{"g": "open"}', "4", "30 psi", "12", "on"]
    predictions = ['{"g": "closed", "h": true}', "x", "4", "34 psi", "many", "on"]
    summary, examples = score(predictions, references)
    report = {"models": [{"metrics": summary}]}
    for label, values in table_rows(report):
        v, w = per_example_values(label, examples)
        pairs = [(x, wt) for x, wt in zip(v, w, strict=True) if x is not None and wt]
        mean = sum(x * wt for x, wt in pairs) / sum(wt for _, wt in pairs)
        assert mean == pytest.approx(values[0]), label
    assert {label for label, _ in table_rows(report)} >= {
        label for label, path, _ in HEADLINE if headline_value(summary, path) is not None
    }
