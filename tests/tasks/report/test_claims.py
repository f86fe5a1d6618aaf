"""The four claim verdicts on hand-built study data: each claim's two outcomes, the boundary of its threshold, and a
missing arm, without a database or a model (milliseconds)."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.comparison import Comparison
from tasks.report import claims
from tasks.report.claims import FAILS, HOLDS, UNCHECKED
from tasks.report.study_data import Cohort, StudyData

DATASET = "xquad-r"
ARMS = {"zero-shot": "zero-shot", "mono": "mono", "cross": "cross", "hybrid": "hybrid a=0.5"}
ALPHAS = {"zero-shot": None, "mono": 1.0, "cross": 0.0, "hybrid": 0.5}


def study(
    maps: dict[str, dict[str, float]],
    rank_distance: dict[str, float] | None = None,
    unseen: dict[str, float] | None = None,
    p_value: float = 0.0123,
    bias_p_value: float = 0.0123,
) -> tuple[StudyData, Cohort]:
    """A study of one dataset whose arms (by role) have the given mAP per setting (``maps[setting][role]``), rank
    distance per role, and mAP on the one language pair with an unseen language (el -> el, mono) per role; every
    difference of hybrid to another arm tested with Holm-corrected p ``p_value`` (mAP) or ``bias_p_value``."""
    roles = sorted({role for by_role in maps.values() for role in by_role} | set(rank_distance or {}))
    runs = pd.DataFrame(
        {
            "run_id": [f"run-{role}" for role in roles],
            "arm": [ARMS[role] for role in roles],
            "strategy": [role if role != "hybrid" else "hybrid" for role in roles],
            "alpha": [ALPHAS[role] for role in roles],
            "seed": [0] * len(roles),
            "train": ["mlqa-r"] * len(roles),
            "role": roles,
        }
    )
    arms = pd.DataFrame(
        [
            {"dataset": DATASET, "setting": setting, "metric": "map", "arm": ARMS[role], "mean": value, "std": 0.0}
            for setting, by_role in maps.items()
            for role, value in by_role.items()
        ]
    )
    tested = [("map", setting, by_role, p_value) for setting, by_role in maps.items()]
    tested += [("rank_distance", "multi", rank_distance, bias_p_value)] if rank_distance else []
    differences = pd.DataFrame(
        [
            {
                "dataset": DATASET,
                "setting": setting,
                "metric": metric,
                "arm": ARMS["hybrid"],
                "other": ARMS[other],
                "difference": by_role["hybrid"] - by_role[other],
                "p_value": p / 2,
                "p_holm": p,
                "n_queries": 100,
                "permutations": 999,
            }
            for metric, setting, by_role, p in tested
            if "hybrid" in by_role
            for other in by_role
            if other != "hybrid"
        ]
    )
    bias = pd.DataFrame(
        [
            {
                "dataset": DATASET,
                "arm": ARMS[role],
                "query_lang": "en",
                "rank_distance": value,
                "same_lang_first_rate": 0.5,
            }
            for role, value in (rank_distance or {}).items()
        ],  # fmt: skip
        columns=["dataset", "arm", "query_lang", "rank_distance", "same_lang_first_rate"],
    )
    metrics = pd.DataFrame(
        [
            {
                "run_id": f"run-{role}",
                "arm": ARMS[role],
                "dataset": DATASET,
                "setting": "mono",
                "query_lang": "el",
                "corpus_lang": "el",
                "value": value,
            }
            for role, value in (unseen or {}).items()
        ],  # fmt: skip
        columns=["run_id", "arm", "dataset", "setting", "query_lang", "corpus_lang", "value"],
    )
    comparison = Comparison(runs, arms, differences, bias)
    data = StudyData("s", "s.duckdb", comparison, runs, metrics, pd.DataFrame(), pd.DataFrame())
    cohort = Cohort(DATASET, "mlqa-r", {role: ARMS[role] for role in roles}, ["el"] if unseen else [])
    return data, cohort


def multi(hybrid: float, mono: float, cross: float) -> tuple[StudyData, Cohort]:
    return study({"multi": {"hybrid": hybrid, "mono": mono, "cross": cross}})


# --- C1: hybrid gives the best multilingual mAP ----------------------------------------------------------------------


def test_c1_holds_when_hybrid_beats_both_pure_strategies():
    claim = claims.claim_multilingual(*multi(hybrid=0.60, mono=0.50, cross=0.55))
    assert claim.verdict == HOLDS
    assert "hybrid (a=0.5) − cross = +0.050 (Holm p = 0.0123, significant at 0.05)" in claim.text


def test_c1_fails_when_one_pure_strategy_is_higher():
    assert claims.claim_multilingual(*multi(hybrid=0.535, mono=0.510, cross=0.542)).verdict == FAILS


def test_c1_fails_when_hybrid_is_higher_but_not_significantly():
    data, cohort = study({"multi": {"hybrid": 0.60, "mono": 0.50, "cross": 0.55}}, p_value=0.2)
    claim = claims.claim_multilingual(data, cohort)
    assert claim.verdict == FAILS and "(Holm p = 0.2, not significant at 0.05)" in claim.text


def test_c1_boundary_a_tie_is_not_best():
    # "best" is strictly higher: hybrid equal to cross does not hold
    assert claims.claim_multilingual(*multi(hybrid=0.55, mono=0.50, cross=0.55)).verdict == FAILS


def test_c1_names_the_missing_arm():
    claim = claims.claim_multilingual(*study({"multi": {"hybrid": 0.6, "mono": 0.5}}))
    assert claim.verdict == UNCHECKED and "no 'cross' arm" in claim.text


# --- C2: hybrid within CLOSE_GAP of the best in mono and cross ------------------------------------------------------


def close(mono_gap: float, cross_gap: float, best: float = 0.75) -> tuple[StudyData, Cohort]:
    """mono: the mono arm is ``best``, hybrid trails by ``mono_gap``; cross: the cross arm leads by ``cross_gap``."""
    return study(
        {
            "mono": {"hybrid": best - mono_gap, "mono": best, "cross": best - 0.2},
            "cross": {"hybrid": best - cross_gap, "mono": best - 0.2, "cross": best},
        }
    )


def test_c2_holds_when_hybrid_is_the_best_in_both_settings():
    claim = claims.claim_close(*close(mono_gap=-0.01, cross_gap=-0.02))
    assert claim.verdict == HOLDS and "In the mono setting hybrid is the best" in claim.text


def test_c2_holds_within_the_gap_and_fails_beyond_it():
    assert claims.claim_close(*close(mono_gap=0.007, cross_gap=0.003)).verdict == HOLDS
    assert claims.claim_close(*close(mono_gap=0.014, cross_gap=0.003)).verdict == FAILS  # mono too far
    assert claims.claim_close(*close(mono_gap=0.003, cross_gap=0.014)).verdict == FAILS  # cross too far


def test_c2_boundary_a_gap_equal_to_the_threshold_fails(monkeypatch):
    # 0.125 and the values below are exact in binary: the gap is exactly the threshold ("below" it is strict)
    monkeypatch.setattr(claims, "CLOSE_GAP", 0.125)
    assert claims.claim_close(*close(mono_gap=0.125, cross_gap=0.0)).verdict == FAILS
    assert claims.claim_close(*close(mono_gap=0.125 - 2**-20, cross_gap=0.0)).verdict == HOLDS


# --- C3: hybrid's rank distance below mono's and cross's -------------------------------------------------------------


def bias(hybrid: float, mono: float, cross: float) -> tuple[StudyData, Cohort]:
    maps = {"multi": {"hybrid": 0.5, "mono": 0.5, "cross": 0.5}}
    return study(maps, rank_distance={"hybrid": hybrid, "mono": mono, "cross": cross})


def test_c3_holds_when_hybrid_has_the_lowest_rank_distance():
    claim = claims.claim_bias(*bias(hybrid=358.8, mono=389.4, cross=359.2))
    assert claim.verdict == HOLDS and "hybrid − cross = -0.400 (Holm p = 0.0123, significant at 0.05)" in claim.text


def test_c3_a_lower_rank_distance_that_is_not_significant_is_no_win():
    # the last study: 358.8 against cross's 359.2, a 0.4-rank difference
    data, cohort = study(
        {"multi": {"hybrid": 0.5, "mono": 0.5, "cross": 0.5}},
        rank_distance={"hybrid": 358.8, "mono": 389.4, "cross": 359.2},
        bias_p_value=0.61,
    )
    claim = claims.claim_bias(data, cohort)
    assert claim.verdict == FAILS and "hybrid − cross = -0.400 (Holm p = 0.61, not significant at 0.05)" in claim.text


def test_c3_fails_when_a_pure_strategy_is_lower():
    assert claims.claim_bias(*bias(hybrid=485.3, mono=500.0, cross=483.7)).verdict == FAILS


def test_c3_boundary_an_equal_rank_distance_is_not_lower():
    assert claims.claim_bias(*bias(hybrid=359.0, mono=400.0, cross=359.0)).verdict == FAILS


def test_c3_names_the_missing_arm():
    data, cohort = study({"multi": {"hybrid": 0.5, "cross": 0.5}}, rank_distance={"hybrid": 300.0, "cross": 320.0})
    claim = claims.claim_bias(data, cohort)
    assert claim.verdict == UNCHECKED and "no 'mono' arm" in claim.text


# --- C4: on unseen languages hybrid beats zero-shot and is not below mono and cross -------------------------------


def unseen(hybrid: float, zero_shot: float, mono: float, cross: float) -> tuple[StudyData, Cohort]:
    maps = {"multi": {"hybrid": 0.5, "mono": 0.5, "cross": 0.5, "zero-shot": 0.3}}
    return study(maps, unseen={"hybrid": hybrid, "zero-shot": zero_shot, "mono": mono, "cross": cross})


def test_c4_holds_above_zero_shot_and_not_below_the_pure_strategies():
    claim = claims.claim_unseen(*unseen(hybrid=0.65, zero_shot=0.62, mono=0.64, cross=0.63))
    assert claim.verdict == HOLDS and "+0.030 over zero-shot" in claim.text


def test_c4_fails_below_a_pure_strategy_or_not_above_zero_shot():
    assert claims.claim_unseen(*unseen(hybrid=0.648, zero_shot=0.62, mono=0.651, cross=0.64)).verdict == FAILS
    assert claims.claim_unseen(*unseen(hybrid=0.60, zero_shot=0.62, mono=0.55, cross=0.55)).verdict == FAILS


def test_c4_boundaries_a_tie_with_mono_holds_a_tie_with_zero_shot_fails():
    # "not below" mono and cross: equal is enough; "beats" zero-shot: equal is not
    assert claims.claim_unseen(*unseen(hybrid=0.65, zero_shot=0.60, mono=0.65, cross=0.65)).verdict == HOLDS
    assert claims.claim_unseen(*unseen(hybrid=0.65, zero_shot=0.65, mono=0.60, cross=0.60)).verdict == FAILS


def test_c4_cannot_be_checked_without_an_unseen_language():
    data, cohort = study({"multi": {"hybrid": 0.5, "mono": 0.5, "cross": 0.5}})
    claim = claims.claim_unseen(data, cohort)
    assert claim.verdict == UNCHECKED and "no language is unseen" in claim.text


@pytest.mark.parametrize("check", [claims.claim_multilingual, claims.claim_close, claims.claim_bias])
def test_a_study_with_only_zero_shot_checks_nothing(check):
    data, cohort = study({"multi": {"zero-shot": 0.3}, "mono": {"zero-shot": 0.8}, "cross": {"zero-shot": 0.6}})
    assert check(data, cohort).verdict == UNCHECKED
