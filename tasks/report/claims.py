"""The paper's four claims (arXiv 2408.10536) checked on a study's numbers, each with a verdict and the numbers
behind it: (C1) hybrid gives the best multilingual mAP, (C2) it stays within ``CLOSE_GAP`` of the best arm in the
mono and cross settings, (C3) its rank distance is below mono's and cross's, (C4) on language pairs with a language
unseen in training it beats zero-shot and is not below mono and cross. C1 and C3 also need each of hybrid's
differences to be significant (paired test over queries, Holm-corrected p below ``SIGNIFICANCE``) where the study
tested it. A claim whose arms are missing "cannot be checked". Verdicts compare unrounded numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from hbir.core.names import SETTINGS
from tasks.report.markdown import fmt, fmt_p, fmt_signed, p_relation
from tasks.report.study_data import (
    ROLE_LABELS,
    Cohort,
    StudyData,
    bias_means,
    difference_of,
    mean_of,
    unseen_map,
    unseen_pair_count,
)

SIGNIFICANCE = 0.05  # a difference with p below this is called significant
CLOSE_GAP = 0.01  # C2: hybrid is "close to the best" when it trails it by less than this much mAP
HOLDS, FAILS, UNCHECKED = "holds", "does not hold", "cannot be checked"


@dataclass(frozen=True)
class Claim:
    key: str  # C1 .. C4
    title: str
    verdict: str  # holds | does not hold | cannot be checked
    text: str


def claims(data: StudyData, cohort: Cohort) -> list[Claim]:
    """The paper's four claims checked on one cohort, each with its verdict and the numbers behind it."""
    checks = (claim_multilingual, claim_close, claim_bias, claim_unseen)
    return [check(data, cohort) for check in checks]


def _missing(cohort: Cohort, needed: tuple[str, ...]) -> list[str]:
    return [role for role in needed if role not in cohort.roles]


def _unchecked(key: str, title: str, missing: list[str], known: str = "") -> Claim:
    arms = ", ".join(f"'{ROLE_LABELS[role]}'" for role in missing)
    text = f"Cannot be checked: the study has no {arms} arm for this dataset."
    return Claim(key, title, UNCHECKED, f"{text} {known}".strip())


def _versus(data: StudyData, cohort: Cohort, setting: str, role: str, other: str) -> str:
    """ "hybrid (a=0.5) − mono = +0.012 (Holm p = 0.0021, significant at 0.05)"."""
    label = f"{ROLE_LABELS[role]} − {ROLE_LABELS[other]}"
    found = difference_of(data, cohort.dataset, setting, cohort.roles[role], cohort.roles[other])
    if found is None:
        first, second = (mean_of(data, cohort.dataset, setting, cohort.roles[r]) for r in (role, other))
        return f"{label} = {fmt_signed(first - second)} (not tested)" if None not in (first, second) else label
    difference, p_value = found
    significant = "significant" if p_value < SIGNIFICANCE else "not significant"
    p_text = p_relation(fmt_p(p_value, data.permutations))
    return f"{label} = {fmt_signed(difference)} (Holm p {p_text}, {significant} at {SIGNIFICANCE})"


def _significant(data: StudyData, cohort: Cohort, setting: str, others: tuple[str, ...], metric: str = "map") -> bool:
    """Whether hybrid's difference to each of ``others`` is significant (Holm-corrected p below SIGNIFICANCE); a
    difference the study did not test (no per-query rows) does not count against it."""
    for other in others:
        found = difference_of(data, cohort.dataset, setting, cohort.roles["hybrid"], cohort.roles[other], metric)
        if found is not None and found[1] >= SIGNIFICANCE:
            return False
    return True


def _means_text(data: StudyData, cohort: Cohort, setting: str, roles: tuple[str, ...]) -> str:
    present = [role for role in roles if role in cohort.roles]
    return ", ".join(
        f"{ROLE_LABELS[role]} {fmt(mean_of(data, cohort.dataset, setting, cohort.roles[role]))}" for role in present
    )


def claim_multilingual(data: StudyData, cohort: Cohort) -> Claim:
    """C1: hybrid batches give the best multilingual (setting multi) mAP: higher than mono's and cross's."""
    key, title = "C1", "hybrid batches give the best multilingual mAP"
    known = f"Multilingual mAP: {_means_text(data, cohort, 'multi', ('hybrid', 'mono', 'cross'))}."
    missing = _missing(cohort, ("hybrid", "mono", "cross"))
    if missing:
        return _unchecked(key, title, missing, known)
    means = {role: mean_of(data, cohort.dataset, "multi", cohort.roles[role]) for role in ("hybrid", "mono", "cross")}
    higher = means["hybrid"] > means["mono"] and means["hybrid"] > means["cross"]
    holds = higher and _significant(data, cohort, "multi", ("mono", "cross"))
    versus = "; ".join(_versus(data, cohort, "multi", "hybrid", other) for other in ("mono", "cross"))
    return Claim(key, title, HOLDS if holds else FAILS, f"{known} {versus}.")


def claim_close(data: StudyData, cohort: Cohort) -> Claim:
    """C2: in the mono and cross settings hybrid is the best of {mono, cross, hybrid} or trails it by < CLOSE_GAP."""
    key, title = "C2", "hybrid stays close to the best in the monolingual and cross-lingual settings"
    needed = ("hybrid", "mono", "cross")
    known = " ".join(
        f"{setting.capitalize()} mAP: {_means_text(data, cohort, setting, needed)}." for setting in SETTINGS[:2]
    )
    missing = _missing(cohort, needed)
    if missing:
        return _unchecked(key, title, missing, known)
    parts = [_closeness(data, cohort, setting) for setting in ("mono", "cross")]
    holds = all(close for close, _ in parts)
    text = f"{known} Threshold: hybrid within {CLOSE_GAP} mAP of the best arm. " + ". ".join(t for _, t in parts) + "."
    return Claim(key, title, HOLDS if holds else FAILS, text)


def _closeness(data: StudyData, cohort: Cohort, setting: str) -> tuple[bool, str]:
    """Whether hybrid is the best of {mono, cross, hybrid} in ``setting`` or within CLOSE_GAP of it, and why."""
    means = {role: mean_of(data, cohort.dataset, setting, cohort.roles[role]) for role in ("hybrid", "mono", "cross")}
    best, runner_up = sorted(means, key=lambda role: means[role], reverse=True)[:2]
    if best == "hybrid":  # the p-value then says whether its lead over the next arm is real
        return True, (
            f"In the {setting} setting hybrid is the best ({fmt(means['hybrid'])}); "
            f"{_versus(data, cohort, setting, 'hybrid', runner_up)}"
        )
    gap = means[best] - means["hybrid"]
    return gap < CLOSE_GAP, (
        f"In the {setting} setting {ROLE_LABELS[best]} is the best ({fmt(means[best])}) and hybrid trails it by "
        f"{fmt(gap)}, {'below' if gap < CLOSE_GAP else 'not below'} the threshold; "
        f"{_versus(data, cohort, setting, 'hybrid', best)}"
    )


def claim_bias(data: StudyData, cohort: Cohort) -> Claim:
    """C3: hybrid's mean rank distance (over query languages) is lower than mono's and cross's."""
    key, title = "C3", "hybrid reduces language bias"
    means = bias_means(data, cohort.dataset)
    present = [role for role in ("hybrid", "mono", "cross", "zero-shot") if cohort.roles.get(role) in means.index]
    distances = {role: float(means.loc[cohort.roles[role], "rank_distance"]) for role in present}
    firsts = {role: float(means.loc[cohort.roles[role], "same_lang_first_rate"]) for role in present}
    known = (
        "Mean rank distance over query languages (lower is better): "
        + ", ".join(f"{ROLE_LABELS[role]} {fmt(distances[role])}" for role in present)
        + "; same-language-first rate: "
        + ", ".join(f"{ROLE_LABELS[role]} {fmt(firsts[role])}" for role in present)
        + "."
    )
    missing = [role for role in ("hybrid", "mono", "cross") if role not in present]
    if missing:
        return _unchecked(key, title, missing, known if present else "")
    lower = distances["hybrid"] < distances["mono"] and distances["hybrid"] < distances["cross"]
    holds = lower and _significant(data, cohort, "multi", ("mono", "cross"), metric="rank_distance")
    by = ", ".join(_bias_versus(data, cohort, distances, other) for other in ("mono", "cross"))
    text = f"{known} Rank distance {by} (negative: less bias than that arm)."
    return Claim(key, title, HOLDS if holds else FAILS, text)


def _bias_versus(data: StudyData, cohort: Cohort, distances: dict[str, float], other: str) -> str:
    """ "hybrid − mono = -30.600 (Holm p < 0.0001, significant at 0.05)": the paired test of per-query distances."""
    text = f"hybrid − {other} = {fmt_signed(distances['hybrid'] - distances[other])}"
    found = difference_of(data, cohort.dataset, "multi", cohort.roles["hybrid"], cohort.roles[other], "rank_distance")
    if found is None:
        return f"{text} (not tested)"
    significant = "significant" if found[1] < SIGNIFICANCE else "not significant"
    return f"{text} (Holm p {p_relation(fmt_p(found[1], data.permutations))}, {significant} at {SIGNIFICANCE})"


def claim_unseen(data: StudyData, cohort: Cohort) -> Claim:
    """C4: on pairs with a language unseen in training, hybrid beats zero-shot and is not below mono and cross."""
    key, title = "C4", "hybrid generalises zero-shot to languages unseen in training"
    if not cohort.unseen:
        return Claim(
            key,
            title,
            UNCHECKED,
            f"Cannot be checked here: every evaluation language of {cohort.dataset} is in the training data "
            f"({cohort.train}), so no language is unseen.",
        )
    means = unseen_map(data, cohort)
    needed = ("hybrid", "zero-shot", "mono", "cross")
    present = [role for role in needed if cohort.roles.get(role) in means.index]
    known = (
        f"Unseen in training: {', '.join(cohort.unseen)}; mean mAP over the {unseen_pair_count(data, cohort)} "
        "language pairs with an unseen query or corpus language: "
        + ", ".join(f"{ROLE_LABELS[role]} {fmt(means[cohort.roles[role]])}" for role in present)
        + "."
    )
    missing = [role for role in needed if role not in present]
    if missing:
        return _unchecked(key, title, missing, known)
    hybrid = means[cohort.roles["hybrid"]]
    gains = {role: hybrid - means[cohort.roles[role]] for role in ("zero-shot", "mono", "cross")}
    holds = gains["zero-shot"] > 0 and gains["mono"] >= 0 and gains["cross"] >= 0
    by = ", ".join(f"{fmt_signed(gain)} over {ROLE_LABELS[role]}" for role, gain in gains.items())
    return Claim(key, title, HOLDS if holds else FAILS, f"{known} Hybrid: {by}.")
