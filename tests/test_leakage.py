"""Tests of audit_tasks.leakage: the pair statistics on small frames, and the planted laptop -> mouse story."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit_tasks.config import LeakageCheck
from audit_tasks.errors import ManifestError
from audit_tasks.group_metrics import class_indicator
from audit_tasks.leakage import (
    MSG_MISSING_COLUMN,
    STATUS_LEAK,
    check_leakage,
    worst_images,
)
from audit_tasks.stats import holm_adjust, newcombe_exceedance_pvalue
from audit_tasks.subgroups import STATUS_TOO_SMALL
from fixtures_multilabel import CLASSES, SEED, make_scenes, predict_sets, train_multilabel

statsmodels_proportion = pytest.importorskip("statsmodels.stats.proportion")


def planted(
    n_a_only: int, k_a_only: int, n_neither: int, k_neither: int, n_both: int = 20, *, b: str = "mouse"
) -> pd.DataFrame:
    """Images of laptop without b (k of them predicted b), of neither (k predicted b), of both (b predicted)."""
    tags = [["laptop"]] * n_a_only + [["cup"]] * n_neither + [["laptop", b]] * n_both
    predicted = (
        [["laptop", b]] * k_a_only
        + [["laptop"]] * (n_a_only - k_a_only)
        + [["cup", b]] * k_neither
        + [["cup"]] * (n_neither - k_neither)
        + [["laptop", b]] * n_both
    )
    return pd.DataFrame(
        {"image_id": [f"img{i:04d}" for i in range(len(tags))], "tags": tags, "predicted_labels": predicted}
    )


def pair(result, a: str, b: str) -> pd.Series:
    rows = result.pairs[(result.pairs["tag_a"] == a) & (result.pairs["tag_b"] == b)]
    assert len(rows) == 1, f"no single row for {a} -> {b}"
    return rows.iloc[0]


def test_a_planted_gap_flags_and_fails_its_gate():
    result = check_leakage(planted(100, 60, 100, 5), classes=CLASSES, check=LeakageCheck())
    row = pair(result, "laptop", "mouse")
    assert (row["n_a_without_b"], row["n_neither"]) == (100, 100)
    assert row["fp_rate_with_a"] == pytest.approx(0.60)
    assert row["fp_rate_without_a"] == pytest.approx(0.05)
    assert row["gap"] == pytest.approx(0.55)
    assert row["ci_low"] > 0.10 and row["flagged"] and row["status"] == STATUS_LEAK
    gate = next(g for g in result.gates if g.name == "leakage/laptop -> mouse/fp_rate_gap")
    assert not gate.passed and gate.judged and gate.value == pytest.approx(0.55) and gate.threshold == 0.10
    assert "established" in gate.detail


def test_equal_rates_never_flag():
    result = check_leakage(planted(200, 20, 200, 20), classes=CLASSES, check=LeakageCheck())
    assert not result.pairs["flagged"].any()
    assert all(g.passed for g in result.gates)
    assert pair(result, "laptop", "mouse")["gap"] == pytest.approx(0.0)


def test_a_gap_under_min_support_is_written_but_not_judged():
    result = check_leakage(planted(20, 20, 200, 0), classes=CLASSES, check=LeakageCheck(min_support=30))
    row = pair(result, "laptop", "mouse")
    assert row["gap"] == pytest.approx(1.0) and not row["flagged"] and row["status"] == STATUS_TOO_SMALL
    gate = next(g for g in result.gates if g.subject == "laptop -> mouse")
    assert gate.passed and not gate.judged and STATUS_TOO_SMALL in gate.detail


def test_only_pairs_that_cooccur_are_listed():
    result = check_leakage(planted(100, 0, 100, 0), classes=CLASSES, check=LeakageCheck())
    assert set(zip(result.pairs["tag_a"], result.pairs["tag_b"], strict=True)) == {
        ("laptop", "mouse"),
        ("mouse", "laptop"),
    }


def test_gap_interval_matches_statsmodels_newcombe():
    """With one judged pair and no adjustment the interval is the two-sided Newcombe at 1 - 2 * alpha."""
    frame = planted(100, 37, 150, 12, n_both=0)
    frame.loc[len(frame)] = ["extra", ["laptop", "mouse"], ["laptop", "mouse"]]  # the pair must co-occur once
    check = LeakageCheck(multiple_comparisons="none", min_support=30)
    row = pair(check_leakage(frame, classes=CLASSES, check=check), "laptop", "mouse")
    low, high = statsmodels_proportion.confint_proportions_2indep(
        37, 100, 12, 150, method="newcomb", compare="diff", alpha=2 * (1 - check.confidence)
    )
    assert row["ci_low"] == pytest.approx(low, abs=1e-12)
    assert row["ci_high"] == pytest.approx(high, abs=1e-12)


def test_holm_adjusts_over_every_judged_pair():
    """Three judged pairs: each pair's p-value is Holm's over the raw one-sided p-values of the three."""
    tags = [["laptop"]] * 60 + [["cup"]] * 80 + [["laptop", "mouse", "book"]] * 40
    predicted = (
        [["laptop", "mouse"]] * 21
        + [["laptop"]] * 39
        + [["cup", "mouse"]] * 4
        + [["cup"]] * 76
        + [["laptop", "mouse", "book"]] * 40
    )
    frame = pd.DataFrame({"image_id": [str(i) for i in range(len(tags))], "tags": tags, "predicted_labels": predicted})
    check = LeakageCheck(min_support=30)
    result = check_leakage(frame, classes=CLASSES, check=check)
    judged = result.pairs[result.pairs["status"] != STATUS_TOO_SMALL].reset_index(drop=True)
    raw = newcombe_exceedance_pvalue(
        np.round(judged["fp_rate_with_a"] * judged["n_a_without_b"]),
        judged["n_a_without_b"],
        np.round(judged["fp_rate_without_a"] * judged["n_neither"]),
        judged["n_neither"],
        check.max_rate_gap,
    )
    assert len(judged) >= 2
    np.testing.assert_allclose(judged["pvalue"], holm_adjust(raw), rtol=1e-12)
    none = check_leakage(frame, classes=CLASSES, check=LeakageCheck(min_support=30, multiple_comparisons="none"))
    unadjusted = none.pairs[none.pairs["status"] != STATUS_TOO_SMALL]["pvalue"].to_numpy()
    assert (judged["pvalue"].to_numpy() >= unadjusted).all()  # the adjustment never makes a p-value smaller


def test_holm_family_can_stop_a_marginal_flag():
    """The smallest gap established alone is not established among twelve judged pairs (family-wise error)."""
    rng = np.random.default_rng(3)
    truth = rng.random((400, len(CLASSES))) < 0.5
    tags = [[c for c, t in zip(CLASSES, row, strict=True) if t] for row in truth]
    a_only = np.flatnonzero(truth[:, 0] & ~truth[:, 1])  # laptop without mouse

    def frame_with(k: int) -> pd.DataFrame:
        predicted = [list(t) for t in tags]
        for i in a_only[:k]:
            predicted[i] = [*predicted[i], "mouse"]
        return pd.DataFrame(
            {"image_id": [str(i) for i in range(len(tags))], "tags": tags, "predicted_labels": predicted}
        )

    def laptop_mouse(k: int, rule: str) -> pd.Series:
        check = LeakageCheck(multiple_comparisons=rule)
        return pair(check_leakage(frame_with(k), classes=CLASSES, check=check), "laptop", "mouse")

    k = next(k for k in range(len(a_only)) if laptop_mouse(k, "none")["flagged"])
    holm = check_leakage(frame_with(k), classes=CLASSES, check=LeakageCheck())
    assert (holm.pairs["status"] != STATUS_TOO_SMALL).sum() == 12
    assert not pair(holm, "laptop", "mouse")["flagged"]
    assert pair(holm, "laptop", "mouse")["pvalue"] == pytest.approx(12 * laptop_mouse(k, "none")["pvalue"])
    assert pair(holm, "laptop", "mouse")["ci_low"] <= LeakageCheck().max_rate_gap


def test_missing_predicted_sets_name_the_column():
    with pytest.raises(ManifestError) as info:
        check_leakage(pd.DataFrame({"tags": [["laptop"]]}), classes=CLASSES, check=LeakageCheck())
    assert str(info.value) == MSG_MISSING_COLUMN.format(column="predicted_labels", why="the predicted classes")


def test_truth_is_the_tags_among_the_classes():
    truth = class_indicator([["laptop", "desk"], "mouse|cup", None, []], CLASSES)
    assert truth.tolist() == [
        [True, False, False, False],
        [False, True, True, False],
        [False, False, False, False],
        [False, False, False, False],
    ]


def test_worst_images_are_the_highest_b_scores_among_a_without_b():
    frame = planted(100, 60, 100, 5)
    rng = np.random.default_rng(0)
    frame["scores"] = list(rng.random((len(frame), len(CLASSES))))
    result = check_leakage(frame, classes=CLASSES, check=LeakageCheck())
    worst = worst_images(frame, result.pairs, classes=CLASSES, count=3)
    assert list(worst["rank"]) == [1, 2, 3] and set(worst["tag_b"]) == {"mouse"}
    a_only = frame.iloc[:100]
    expected = a_only.assign(s=[s[1] for s in a_only["scores"]]).nlargest(3, "s")["image_id"].tolist()
    assert worst["image_id"].tolist() == expected


# ---------------------------------------------------------------------------------------------
# The planted story: a model trained to say "mouse" whenever a laptop is there
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audit_scenes():
    return make_scenes(400, SEED + 1)


def _leakage_of(model, scenes) -> pd.DataFrame:
    frame = pd.DataFrame({"tags": [list(s.drawn) for s in scenes], "predicted_labels": predict_sets(model, scenes)})
    return check_leakage(frame, classes=CLASSES, check=LeakageCheck()).pairs


def test_biased_model_leaks_laptop_into_mouse_and_nothing_else(audit_scenes):
    model = train_multilabel(make_scenes(600, SEED, biased_labels=True))
    pairs = _leakage_of(model, audit_scenes)
    story = pairs[(pairs["tag_a"] == "laptop") & (pairs["tag_b"] == "mouse")].iloc[0]
    assert story["flagged"], story.to_dict()
    assert story["ci_low"] > LeakageCheck().max_rate_gap
    others = pairs[~((pairs["tag_a"] == "laptop") & (pairs["tag_b"] == "mouse"))]
    assert not others["flagged"].any(), others[others["flagged"]].to_dict("records")


def test_fair_model_passes_every_pair(audit_scenes):
    model = train_multilabel(make_scenes(600, SEED, biased_labels=False))
    pairs = _leakage_of(model, audit_scenes)
    assert (pairs["status"] != STATUS_TOO_SMALL).all()  # every pair judged: passing is evidence
    assert not pairs["flagged"].any(), pairs[pairs["flagged"]].to_dict("records")
