"""The statistics between runs: Holm's correction and the paired bootstrap interval, against hand-computed values
and scipy; the arm names runs are grouped by."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tasks.comparison import bootstrap_interval, holm, with_arms


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 (m = 3): 3 * 0.01 = 0.03; 2 * 0.03 = 0.06; 1 * 0.04 = 0.04, raised to the 0.06 before
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    # capped at 1, and a single test is left as it is
    np.testing.assert_allclose(holm(np.array([0.5, 0.6])), [1.0, 1.0])
    np.testing.assert_allclose(holm(np.array([0.2])), [0.2])


def test_holm_never_lowers_a_p_value_and_keeps_their_order():
    p = np.random.default_rng(0).uniform(size=50) ** 3
    adjusted = holm(p)
    assert (adjusted >= p).all() and (np.diff(adjusted[np.argsort(p)]) >= 0).all()


def test_the_bootstrap_interval_matches_scipy():
    contributions = np.random.default_rng(1).normal(0.01, 0.05, size=2000) / 2000  # a mean difference, as sums
    low, high = bootstrap_interval(contributions, 4000, np.random.default_rng(2))
    assert low < contributions.sum() < high
    reference = stats.bootstrap(
        (contributions,), np.sum, n_resamples=4000, method="percentile", random_state=3
    ).confidence_interval
    assert low == pytest.approx(reference.low, rel=0.05) and high == pytest.approx(reference.high, rel=0.05)


def test_the_bootstrap_interval_of_identical_units_is_a_point():
    assert bootstrap_interval(np.full(10, 0.1), 100, np.random.default_rng(0)) == pytest.approx((1.0, 1.0))
    assert np.isnan(bootstrap_interval(np.full(10, 0.1), 0, np.random.default_rng(0))).all()


def test_runs_not_merged_beside_merged_ones_keep_their_plain_arm_name():
    def config(merge):
        return json.dumps({"data": {"train": ["mlqa-r"]}, "train": {"merge": merge}})

    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "z"],
            "strategy": ["mono", "hybrid", "hybrid", "zero-shot"],
            "alpha": [0.5, 0.5, 0.5, None],
            "seed": [0, 0, 0, None],
            "config": [config(None), config(None), config("auto"), config(None)],
            "merge_weight": [None, None, 0.6, None],
        }
    )
    arms = with_arms(runs).set_index("run_id")["arm"].to_dict()
    assert arms == {"a": "mono", "b": "hybrid a=0.5", "c": "hybrid a=0.5 merged auto", "z": "zero-shot"}
