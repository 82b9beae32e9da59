"""Tests of audit_tasks.subgroups and its engine audit_tasks.group_metrics: differential against fairlearn's
MetricFrame, the gate rule, the tables. The interval maths itself is tested in test_stats.py."""

from __future__ import annotations

import functools
import math
import typing

import numpy as np
import pandas as pd
import pytest

from audit_tasks import group_metrics, stats, subgroups
from audit_tasks.config import SubgroupCheck
from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.group_metrics import BY_GROUP_COLUMNS, METRIC_NAMES, MSG_UNKNOWN_METRIC, GroupMetricFrame
from audit_tasks.subgroups import CONFUSION_COLUMNS, GROUPS_COLUMNS, check_subgroups

CLASSES = ("cat", "dog")
ATTRIBUTES = ("gender", "skin_tone", "age")


# --------------------------------------------------------------------------------------------- data


def generated(n: int = 3000, seed: int = 0, missing: bool = True) -> pd.DataFrame:
    """Binary predictions whose accuracy depends on the attributes; some attribute values missing."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "gender": rng.choice(["female", "male", "nonbinary"], n, p=[0.45, 0.45, 0.1]).astype(object),
            "skin_tone": rng.choice(["light", "dark"], n).astype(object),
            "age": rng.choice(["young", "middle", "old"], n).astype(object),
        }
    )
    if missing:
        frame.loc[rng.random(n) < 0.05, "gender"] = None
        frame.loc[rng.random(n) < 0.03, "age"] = np.nan
    label = rng.choice(CLASSES, n)
    accuracy = np.where(frame["skin_tone"] == "dark", 0.8, 0.93) - np.where(frame["age"] == "old", 0.05, 0.0)
    right = rng.random(n) < accuracy
    frame["label"] = label
    frame["prediction"] = np.where(right, label, np.where(label == "cat", "dog", "cat"))
    return frame


def two_groups(n_a: int, acc_a: float, n_b: int, acc_b: float, seed: int = 0, exact: bool = True) -> pd.DataFrame:
    """Groups `a` and `b` of attribute `group`, with (exactly, by default) the given accuracies."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, n, acc in (("a", n_a, acc_a), ("b", n_b, acc_b)):
        label = rng.choice(CLASSES, n)
        right = np.arange(n) < round(acc * n) if exact else rng.random(n) < acc
        rng.shuffle(right)
        prediction = np.where(right, label, np.where(label == "cat", "dog", "cat"))
        parts.append(pd.DataFrame({"group": name, "label": label, "prediction": prediction}))
    return pd.concat(parts, ignore_index=True)


def fairlearn_by_group(frame: pd.DataFrame, features: list[str], metric) -> dict[str, tuple[float, int]]:
    """fairlearn's per-group value and size, keyed by our group label (values joined by '&')."""
    from fairlearn.metrics import MetricFrame, count

    mf = MetricFrame(
        metrics={"value": metric, "n": count},
        y_true=frame["label"],
        y_pred=frame["prediction"],
        sensitive_features=frame[features].fillna("unknown"),
    )
    table = mf.by_group.dropna(subset=["n"])
    keys = table.index.to_flat_index() if isinstance(table.index, pd.MultiIndex) else table.index
    return {
        ("&".join(k) if isinstance(k, tuple) else str(k)): (float(v), int(n))
        for k, v, n in zip(keys, table["value"], table["n"], strict=True)
    }


def sklearn_metric(name: str):
    from fairlearn.metrics import false_positive_rate
    from sklearn.metrics import accuracy_score, precision_score, recall_score

    return {
        "accuracy": accuracy_score,
        "recall": functools.partial(recall_score, pos_label="dog", zero_division=np.nan),
        "precision": functools.partial(precision_score, pos_label="dog", zero_division=np.nan),
        "fpr": functools.partial(false_positive_rate, pos_label="dog"),
    }[name]


FEATURE_SETS = [
    ["gender"],
    ["skin_tone"],
    ["age"],
    ["gender", "skin_tone"],
    ["skin_tone", "age"],
    ["gender", "skin_tone", "age"],
]


# --------------------------------------------------------------------------------------------- differential


@pytest.mark.parametrize("features", FEATURE_SETS, ids=lambda f: "&".join(f))
@pytest.mark.parametrize("metric", ["accuracy", "recall", "precision", "fpr"])
def test_values_and_group_sizes_agree_with_fairlearn(metric: str, features: list[str]) -> None:
    frame = generated()
    expected = fairlearn_by_group(frame, features, sklearn_metric(metric))
    gmf = GroupMetricFrame(
        y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[features], classes=CLASSES
    )
    ours = gmf.by_group(metric, positive_class="dog").set_index("group")
    assert sorted(ours.index) == sorted(expected)
    for group, (value, n) in expected.items():
        assert ours.loc[group, "n"] == n
        assert ours.loc[group, "value"] == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("features", [["gender"], ["gender", "skin_tone"]], ids=lambda f: "&".join(f))
def test_check_groups_table_agrees_with_fairlearn(features: list[str]) -> None:
    from sklearn.metrics import accuracy_score

    frame = generated()
    result = check_subgroups(frame, check=SubgroupCheck(attributes=tuple(features)), classes=CLASSES)
    expected = fairlearn_by_group(frame, features, accuracy_score)
    rows = result.groups[result.groups["attribute"] == "&".join(features)].set_index("group")
    assert rows["n"].to_dict() == {g: n for g, (_, n) in expected.items()}
    assert rows["value"].to_dict() == pytest.approx({g: v for g, (v, _) in expected.items()}, abs=1e-12)


def test_macro_recall_agrees_with_sklearn_macro_on_three_classes() -> None:
    from sklearn.metrics import recall_score

    rng = np.random.default_rng(3)
    n = 2000
    label = rng.choice(["a", "b", "c"], n)
    prediction = np.where(rng.random(n) < 0.7, label, rng.choice(["a", "b", "c"], n))
    frame = pd.DataFrame({"label": label, "prediction": prediction, "gender": rng.choice(["f", "m"], n)})
    expected = fairlearn_by_group(frame, ["gender"], functools.partial(recall_score, average="macro"))
    gmf = GroupMetricFrame(y_true=label, y_pred=prediction, sensitive_features=frame[["gender"]])
    ours = gmf.by_group("macro_recall").set_index("group")["value"].to_dict()
    assert ours == pytest.approx({g: v for g, (v, _) in expected.items()}, abs=1e-12)


def test_overall_agrees_with_sklearn() -> None:
    from sklearn.metrics import accuracy_score

    frame = generated()
    gmf = GroupMetricFrame(y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[["gender"]])
    overall = gmf.overall("accuracy")
    assert (overall.n, overall.value) == (
        len(frame),
        pytest.approx(accuracy_score(frame["label"], frame["prediction"])),
    )


# --------------------------------------------------------------------------------------------- gate rule


def test_planted_gap_with_enough_data_fails() -> None:
    frame = two_groups(1000, 0.95, 1000, 0.85)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("group",)), classes=CLASSES)
    row = result.groups.set_index("group").loc["b"]
    assert (row["status"], bool(row["flagged"]), row["gap"]) == ("gap", True, pytest.approx(0.10))
    assert not next(g for g in result.gates if g.subject == "group=b").passed


def test_same_gap_on_twelve_images_is_too_small_to_judge() -> None:
    frame = two_groups(1000, 0.95, 12, 10 / 12)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("group",)), classes=CLASSES)
    row = result.groups.set_index("group").loc["b"]
    assert (row["status"], bool(row["flagged"])) == ("too small to judge", False)
    assert row["gap"] == pytest.approx(0.95 - 10 / 12)


@pytest.mark.parametrize("seed", range(5))
def test_tiny_random_fluctuation_on_big_groups_does_not_fail(seed: int) -> None:
    frame = two_groups(20_000, 0.9, 20_000, 0.9, seed=seed, exact=False)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("group",), max_gap=0.01), classes=CLASSES)
    assert result.groups["status"].tolist() == ["ok", "ok"]
    assert result.gates and all(g.passed for g in result.gates)


@pytest.mark.parametrize("seed", range(5))
def test_many_small_groups_without_a_real_gap_do_not_fail(seed: int) -> None:
    """Intersections: the best of 24 groups of 40 images is lucky; the Bonferroni adjustment absorbs it."""
    rng = np.random.default_rng(seed)
    n = 24 * 40
    label = rng.choice(CLASSES, n)
    prediction = np.where(rng.random(n) < 0.9, label, np.where(label == "cat", "dog", "cat"))
    frame = pd.DataFrame({"label": label, "prediction": prediction, "cell": np.repeat(np.arange(24), 40).astype(str)})
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("cell",)), classes=CLASSES)
    assert not result.groups["flagged"].any()


def eight_groups(n: int) -> pd.DataFrame:
    """Groups g0..g7 of `n` images: seven at accuracy 0.95 exactly, g7 at 0.85."""
    parts = [
        two_groups(n, 0.95, n, 0.85 if i == 7 else 0.95, seed=i).query("group == 'b'").assign(group=f"g{i}")
        for i in range(8)
    ]
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("method", ["holm", "bonferroni"])
def test_the_adjustment_needs_more_evidence_for_a_gap_among_eight_groups(method: str) -> None:
    check = SubgroupCheck(attributes=("group",), multiple_comparisons=method)
    result = check_subgroups(eight_groups(300), check=check, classes=CLASSES)
    assert result.groups.set_index("group").loc["g7", "status"] == "ok"
    assert "adjusted for 8 groups" in next(g for g in result.gates if g.subject == "group=g7").detail


def test_without_the_adjustment_the_same_gap_among_eight_groups_fails() -> None:
    check = SubgroupCheck(attributes=("group",), multiple_comparisons="none")
    result = check_subgroups(eight_groups(300), check=check, classes=CLASSES)
    assert result.groups.set_index("group")["status"].to_dict() == {
        f"g{i}": "gap" if i == 7 else "ok" for i in range(8)
    }


def test_n_bootstrap_sets_the_resamples_of_the_macro_intervals() -> None:
    frame = two_groups(200, 0.9, 200, 0.8)
    check = SubgroupCheck(attributes=("group",), metric="macro_recall", n_bootstrap=150)
    groups = check_subgroups(frame, check=check, classes=CLASSES).groups
    expected = GroupMetricFrame(
        y_true=frame["label"],
        y_pred=frame["prediction"],
        sensitive_features=frame[["group"]],
        classes=CLASSES,
        n_bootstrap=150,
    ).by_group("macro_recall")
    np.testing.assert_allclose(groups["ci_low"], expected["ci_low"])
    np.testing.assert_allclose(groups["ci_high"], expected["ci_high"])


def test_planted_macro_recall_gap_fails_on_bootstrap_evidence() -> None:
    frame = two_groups(1000, 0.95, 1000, 0.80)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("group",), metric="macro_recall"), classes=CLASSES)
    assert result.groups.set_index("group")["status"].to_dict() == {"a": "ok", "b": "gap"}


def test_gap_above_max_gap_but_not_established_passes() -> None:
    frame = two_groups(60, 0.95, 60, 0.85)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("group",)), classes=CLASSES)
    row = result.groups.set_index("group").loc["b"]
    gate = next(g for g in result.gates if g.subject == "group=b")
    assert (row["gap"] > 0.05, row["status"], gate.passed) == (True, "ok", True)
    assert "not established" in gate.detail


def test_reference_group_must_be_large_enough_to_judge() -> None:
    frame = two_groups(500, 0.9, 10, 1.0)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("group",)), classes=CLASSES)
    gaps = result.groups.set_index("group")["gap"]
    assert (gaps["a"], gaps["b"]) == (pytest.approx(0.0), pytest.approx(-0.1))


def test_fpr_gap_is_positive_when_the_group_has_more_false_positives() -> None:
    rng = np.random.default_rng(0)
    parts = []
    for name, fpr in (("a", 0.05), ("b", 0.25)):
        label = np.array(["cat"] * 1000 + ["dog"] * 1000)
        false_alarm = rng.random(2000) < fpr
        prediction = np.where(label == "cat", np.where(false_alarm, "dog", "cat"), "dog")
        parts.append(pd.DataFrame({"group": name, "label": label, "prediction": prediction}))
    frame = pd.concat(parts, ignore_index=True)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("group",), metric="fpr"), classes=CLASSES)
    row = result.groups.set_index("group").loc["b"]
    assert (row["gap"] > 0.15, row["status"]) == (True, "gap")


def test_recall_of_group_without_positives_is_too_small_to_judge() -> None:
    frame = two_groups(500, 0.9, 500, 0.9)
    frame.loc[frame["group"] == "b", "label"] = "cat"
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("group",), metric="recall"), classes=CLASSES)
    row = result.groups.set_index("group").loc["b"]
    assert (np.isnan(row["value"]), row["status"]) == (True, "too small to judge")


# --------------------------------------------------------------------------------------------- groups


def test_missing_nan_and_empty_values_are_counted_as_unknown() -> None:
    frame = pd.DataFrame(
        {
            "gender": ["f", None, np.nan, "", "  ", "m", pd.NA],
            "label": ["cat"] * 7,
            "prediction": ["cat"] * 7,
        }
    )
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("gender",), min_group_size=1), classes=CLASSES)
    assert result.groups.set_index("group")["n"].to_dict() == {"f": 1, "m": 1, "unknown": 5}


def test_intersections_cover_every_combination_in_config_order() -> None:
    frame = generated(missing=False)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=ATTRIBUTES), classes=CLASSES)
    assert list(dict.fromkeys(result.groups["attribute"])) == [
        "gender",
        "skin_tone",
        "age",
        "gender&skin_tone",
        "gender&age",
        "skin_tone&age",
        "gender&skin_tone&age",
    ]
    assert "female&dark" in set(result.groups.loc[result.groups["attribute"] == "gender&skin_tone", "group"])


def test_a_separator_inside_a_value_is_percent_encoded_in_intersection_labels() -> None:
    frame = pd.DataFrame(
        {
            "team": ["R&D", "R&D", "ops", "50%"],
            "gender": ["female", "male", "female", "male"],
            "label": ["cat"] * 4,
            "prediction": ["cat"] * 4,
        }
    )
    groups = check_subgroups(
        frame, check=SubgroupCheck(attributes=("team", "gender"), min_group_size=1), classes=CLASSES
    ).groups
    assert sorted(groups.loc[groups["attribute"] == "team", "group"]) == ["50%", "R&D", "ops"]
    assert sorted(groups.loc[groups["attribute"] == "team&gender", "group"]) == [
        "50%25&male",
        "R%26D&female",
        "R%26D&male",
        "ops&female",
    ]


def test_intersections_off_judges_single_attributes_only() -> None:
    frame = generated()
    result = check_subgroups(frame, check=SubgroupCheck(attributes=ATTRIBUTES, intersections=False), classes=CLASSES)
    assert set(result.groups["attribute"]) == set(ATTRIBUTES)


def test_marginal_frame_equals_frame_built_on_the_subset() -> None:
    frame = generated()
    full = GroupMetricFrame(
        y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[list(ATTRIBUTES)]
    )
    direct = GroupMetricFrame(
        y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[["age", "gender"]]
    )
    marginal = full.marginal(["age", "gender"])
    assert (marginal.groups, marginal.counts.tolist()) == (direct.groups, direct.counts.tolist())


def test_refactorised_group_ids_give_the_same_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = generated()
    dense = GroupMetricFrame(
        y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[list(ATTRIBUTES)]
    )
    monkeypatch.setattr(group_metrics, "_DENSE_LIMIT", 8)
    compact = GroupMetricFrame(
        y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[list(ATTRIBUTES)]
    )
    assert (compact.groups, compact.counts.tolist()) == (dense.groups, dense.counts.tolist())


def test_categorical_arrow_and_object_columns_give_the_same_groups() -> None:
    frame = generated()
    variants = [
        frame,
        frame.astype({c: "category" for c in ATTRIBUTES}),
        frame.astype({c: "str" for c in (*ATTRIBUTES, "label", "prediction")}),
    ]
    tables = [check_subgroups(f, check=SubgroupCheck(attributes=ATTRIBUTES), classes=CLASSES).groups for f in variants]
    for table in tables[1:]:
        pd.testing.assert_frame_equal(table, tables[0])


# --------------------------------------------------------------------------------------------- intervals


def test_macro_bootstrap_is_seeded_and_brackets_the_value() -> None:
    frame = generated()
    make = functools.partial(
        GroupMetricFrame,
        y_true=frame["label"],
        y_pred=frame["prediction"],
        sensitive_features=frame[["skin_tone"]],
        random_state=7,
    )
    first, second = make().by_group("macro_precision"), make().by_group("macro_precision")
    pd.testing.assert_frame_equal(first, second)
    assert ((first["ci_low"] < first["value"]) & (first["value"] < first["ci_high"])).all()


def test_proportion_intervals_are_wilson_and_their_differences_newcombe() -> None:
    frame = two_groups(120, 0.9, 80, 0.75)
    gmf = GroupMetricFrame(y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[["group"]])
    table = gmf.by_group("accuracy", confidence=0.9)
    low, high = stats.wilson_interval([108, 60], [120, 80], 0.9)
    np.testing.assert_array_equal(table[["ci_low", "ci_high"]].to_numpy(), np.column_stack([low, high]))
    diffs = gmf.differences("accuracy", reference="a", confidence=0.99)
    low, high = stats.newcombe_interval(108, 120, 60, 80, 0.99)
    assert (diffs["diff_low"].iloc[1], diffs["diff_high"].iloc[1]) == (float(low), float(high))
    assert diffs.iloc[0][["difference", "diff_low", "diff_high"]].tolist() == [0.0, 0.0, 0.0]


def test_macro_differences_are_normal_intervals_on_the_two_bootstrap_errors() -> None:
    frame = generated()
    gmf = GroupMetricFrame(
        y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[["skin_tone"]], n_bootstrap=500
    )
    table = gmf.by_group("macro_recall")
    diffs = gmf.differences("macro_recall", reference="light", confidence=0.9)
    ref, other = table.set_index("group").loc["light"], table.set_index("group").loc["dark"]
    low, high = stats.normal_interval(
        ref["value"] - other["value"], np.sqrt(ref["std_error"] ** 2 + other["std_error"] ** 2), 0.9
    )
    row = diffs.set_index("group").loc["dark"]
    assert (row["diff_low"], row["diff_high"]) == (
        pytest.approx(float(low), abs=1e-15),
        pytest.approx(float(high), abs=1e-15),
    )


def test_confidence_outside_0_1_is_refused_by_the_frame() -> None:
    frame = generated()
    with pytest.raises(ConfigError) as raised:
        GroupMetricFrame(y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=None, confidence=95)
    assert str(raised.value) == stats.MSG_BAD_CONFIDENCE.format(confidence=95)


# --------------------------------------------------------------------------------------------- tables and gates


def test_confusion_table_sums_to_group_sizes() -> None:
    frame = generated()
    result = check_subgroups(frame, check=SubgroupCheck(attributes=ATTRIBUTES), classes=CLASSES)
    assert list(result.confusion.columns) == list(CONFUSION_COLUMNS)
    sums = result.confusion.groupby(["attribute", "group"])["n"].sum()
    sizes = result.groups.set_index(["attribute", "group"])["n"]
    assert sums.drop(("__overall__", "__all__")).sort_index().to_dict() == sizes.sort_index().to_dict()
    assert sums[("__overall__", "__all__")] == len(frame)


def test_gates_are_consistent_with_flags() -> None:
    frame = generated(n=6000)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=ATTRIBUTES), classes=CLASSES)
    groups = result.groups
    assert [(g.subject, g.passed, g.metric) for g in result.gates] == [
        (f"{a}={g}", not f, m)
        for a, g, f, m in zip(groups["attribute"], groups["group"], groups["flagged"], groups["metric"], strict=True)
    ]
    assert groups["flagged"].any()
    assert (groups["flagged"] == (groups["status"] == "gap")).all()


def test_groups_table_has_exactly_the_contract_columns() -> None:
    result = check_subgroups(generated(), check=SubgroupCheck(attributes=("gender",)), classes=CLASSES)
    assert list(result.groups.columns) == list(GROUPS_COLUMNS)


def test_too_small_gate_passes_and_says_why() -> None:
    frame = two_groups(1000, 0.95, 12, 0.5)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("group",)), classes=CLASSES)
    gate = next(g for g in result.gates if g.subject == "group=b")
    assert (gate.passed, gate.detail) == (True, "too small to judge (n=12 < 30)")


def test_failing_gate_detail_names_both_groups_and_the_gap() -> None:
    frame = two_groups(1000, 0.95, 1000, 0.85)
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("group",)), classes=CLASSES)
    gate = next(g for g in result.gates if g.subject == "group=b")
    assert gate.detail.startswith("accuracy 0.85 [")
    assert "for group=b vs 0.95 for group=a (gap 0.1 > 0.05" in gate.detail
    assert (gate.check, gate.metric, gate.threshold) == ("subgroups", "accuracy", 0.05)


def test_overall_table_has_one_row_per_metric() -> None:
    result = check_subgroups(generated(), check=SubgroupCheck(attributes=("gender",)), classes=CLASSES)
    assert result.overall["metric"].tolist() == list(METRIC_NAMES)


def test_default_positive_class_is_the_second_class() -> None:
    frame = generated()
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("gender",), metric="recall"), classes=CLASSES)
    recall = result.overall.set_index("metric").loc["recall"]
    assert recall["support"] == (frame["label"] == "dog").sum()


def test_per_class_metric_on_three_classes_judges_every_class() -> None:
    rng = np.random.default_rng(0)
    label = rng.choice(["a", "b", "c"], 600)
    frame = pd.DataFrame({"label": label, "prediction": label, "g": rng.choice(["x", "y"], 600)})
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("g",), metric="recall"), classes=["a", "b", "c"])
    assert sorted(set(result.groups["metric"])) == ["recall[a]", "recall[b]", "recall[c]"]


def test_by_group_keeps_its_type_and_columns_for_any_number_of_features() -> None:
    frame = generated()
    tables = [
        GroupMetricFrame(y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[f]).by_group(
            "accuracy"
        )
        for f in (["gender"], list(ATTRIBUTES), [])
    ]
    assert [list(t.columns) for t in tables] == [list(BY_GROUP_COLUMNS)] * 3
    assert tables[2]["group"].tolist() == ["__all__"]


def test_difference_and_ratio_are_floats_between_extreme_groups() -> None:
    frame = two_groups(100, 0.9, 100, 0.6)
    gmf = GroupMetricFrame(y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[["group"]])
    assert (gmf.difference("accuracy"), gmf.ratio("accuracy")) == (pytest.approx(0.3), pytest.approx(0.6 / 0.9))


def test_empty_input_gives_empty_tables_and_no_gates() -> None:
    frame = pd.DataFrame(
        {"label": pd.Series([], dtype=str), "prediction": pd.Series([], dtype=str), "gender": pd.Series([], dtype=str)}
    )
    result = check_subgroups(frame, check=SubgroupCheck(attributes=("gender",)), classes=CLASSES)
    assert (len(result.groups), result.gates, list(result.groups.columns)) == (0, [], list(GROUPS_COLUMNS))


# --------------------------------------------------------------------------------------------- names


def test_engine_and_statistics_names_stay_importable_from_subgroups() -> None:
    homes = {
        group_metrics: [
            "GroupMetricFrame",
            "MetricEstimate",
            "METRIC_NAMES",
            "SubgroupMetric",
            "BY_GROUP_COLUMNS",
            "DIFFERENCE_COLUMNS",
            "OVERALL_ATTRIBUTE",
            "OVERALL_GROUP",
            "SEPARATOR",
            "UNKNOWN",
            "MSG_UNKNOWN_METRIC",
            "MSG_BAD_POSITIVE",
            "MSG_NOT_A_CLASS",
        ],
        stats: ["wilson_interval", "newcombe_interval"],
    }
    for home, names in homes.items():
        for name in names:
            assert getattr(subgroups, name) is getattr(home, name), name
    assert subgroups.METRICS is METRIC_NAMES


def test_metric_names_are_the_literal_type_and_what_config_accepts() -> None:
    assert METRIC_NAMES == typing.get_args(group_metrics.SubgroupMetric)
    config_metric = typing.get_type_hints(SubgroupCheck)["metric"]
    assert set(typing.get_args(config_metric)) == set(METRIC_NAMES)


# --------------------------------------------------------------------------------------------- errors


def test_unknown_metric_raises_config_error_listing_the_known_ones() -> None:
    frame = generated()
    gmf = GroupMetricFrame(y_true=frame["label"], y_pred=frame["prediction"], sensitive_features=frame[["gender"]])
    with pytest.raises(ConfigError) as raised:
        gmf.by_group("f2")
    assert str(raised.value) == MSG_UNKNOWN_METRIC.format(metric="f2", known=", ".join(METRIC_NAMES))


def test_missing_attribute_column_raises_manifest_error_naming_it() -> None:
    with pytest.raises(ManifestError, match="no column 'skin_tone'"):
        check_subgroups(generated()[["label", "prediction"]], check=SubgroupCheck(attributes=("skin_tone",)))


def test_label_outside_classes_raises_manifest_error_naming_value_and_row() -> None:
    frame = generated()
    frame.loc[17, "label"] = "horse"
    with pytest.raises(ManifestError, match="label 'horse' at row 17 is not one of the classes: cat, dog"):
        check_subgroups(frame, check=SubgroupCheck(attributes=("gender",)), classes=CLASSES)


def test_missing_prediction_raises_manifest_error() -> None:
    frame = generated()
    frame.loc[5, "prediction"] = None
    with pytest.raises(ManifestError, match="prediction is missing at row 5"):
        check_subgroups(frame, check=SubgroupCheck(attributes=("gender",)), classes=CLASSES)


def test_unknown_positive_class_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="positive_class 'bird' is not one of the classes"):
        check_subgroups(
            generated(),
            check=SubgroupCheck(attributes=("gender",), metric="recall"),
            classes=CLASSES,
            positive_class="bird",
        )


# --------------------------------------------------------------------------------------------- issue 16


def cells(spec: dict[tuple[str, str], float], n: int, seed: int = 0) -> pd.DataFrame:
    """Attributes `tone` and `light`; each (tone, light) cell has `n` images at exactly its accuracy."""
    rng = np.random.default_rng(seed)
    parts = []
    for (tone, light), acc in spec.items():
        label = rng.choice(CLASSES, n)
        right = np.arange(n) < round(acc * n)
        rng.shuffle(right)
        prediction = np.where(right, label, np.where(label == "cat", "dog", "cat"))
        parts.append(pd.DataFrame({"tone": tone, "light": light, "label": label, "prediction": prediction}))
    return pd.concat(parts, ignore_index=True)


DARK_LOW = {("dark", "day"): 0.6, ("dark", "night"): 0.62, ("light", "day"): 0.9, ("light", "night"): 0.9}


def test_intersections_of_a_failing_group_are_explained_by_it_and_listed_under_its_gate() -> None:
    result = check_subgroups(cells(DARK_LOW, 300), check=SubgroupCheck(attributes=("tone", "light")), classes=CLASSES)
    groups = result.groups.set_index(["attribute", "group"])
    assert groups.loc[("tone", "dark"), "status"] == "gap"
    for cell in ("dark&day", "dark&night"):
        assert groups.loc[("tone&light", cell), "status"] == "explained by tone=dark"
        assert not groups.loc[("tone&light", cell), "flagged"]
    failed = [g.subject for g in result.gates if not g.passed]
    assert failed == ["tone=dark"]
    assert result.gates[[g.subject for g in result.gates].index("tone=dark")].detail.endswith(
        "also low: dark&day, dark&night"
    )


def test_report_all_keeps_every_flagged_intersection_a_failure_of_its_own() -> None:
    check = SubgroupCheck(attributes=("tone", "light"), intersections="report_all")
    result = check_subgroups(cells(DARK_LOW, 300), check=check, classes=CLASSES)
    failed = sorted(g.subject for g in result.gates if not g.passed)
    assert failed == ["tone&light=dark&day", "tone&light=dark&night", "tone=dark"]


def test_an_intersection_much_worse_than_its_failing_parent_is_its_own_failure() -> None:
    spec = {("dark", "day"): 0.45, ("dark", "night"): 0.85, ("light", "day"): 0.92, ("light", "night"): 0.92}
    result = check_subgroups(cells(spec, 400), check=SubgroupCheck(attributes=("tone", "light")), classes=CLASSES)
    failed = {g.subject for g in result.gates if not g.passed}
    assert {"tone=dark", "tone&light=dark&day"} <= failed
    assert "tone&light=dark&night" not in failed


def test_a_failing_intersection_whose_parents_pass_is_its_own_failure() -> None:
    spec = {("dark", "day"): 0.7, ("dark", "night"): 0.9, ("light", "day"): 0.9, ("light", "night"): 0.9}
    check = SubgroupCheck(attributes=("tone", "light"), max_gap=0.1)
    result = check_subgroups(cells(spec, 400), check=check, classes=CLASSES)
    assert [g.subject for g in result.gates if not g.passed] == ["tone&light=dark&day"]
    assert result.groups.set_index(["attribute", "group"]).loc[("tone&light", "dark&day"), "status"] == "gap"


def test_holm_steps_down_where_bonferroni_stops() -> None:
    """Eight groups, 56 ordered comparisons: six clear gaps are rejected first, so Holm tests the seventh
    (one-sided p 0.00091) at 0.05 / 50, where Bonferroni's 0.05 / 56 = 0.00089 misses it."""
    rng = np.random.default_rng(3)
    rows = []
    specs = [("a", 2000, 1900), *[(f"b{i}", 2000, 1400) for i in range(6)], ("c", 1001, 866)]
    for name, n, right_count in specs:
        label = rng.choice(CLASSES, n)
        right = np.arange(n) < right_count
        prediction = np.where(right, label, np.where(label == "cat", "dog", "cat"))
        rows.append(pd.DataFrame({"group": name, "label": label, "prediction": prediction}))
    frame = pd.concat(rows, ignore_index=True)
    flagged = {
        method: set(
            check_subgroups(
                frame, check=SubgroupCheck(attributes=("group",), multiple_comparisons=method), classes=CLASSES
            ).flagged["group"]
        )
        for method in ("holm", "bonferroni")
    }
    assert flagged["bonferroni"] == {f"b{i}" for i in range(6)}
    assert flagged["holm"] == flagged["bonferroni"] | {"c"}


def null_worlds(worlds: int, groups: int, n: int, accuracy: float, seed: int) -> np.ndarray:
    """Per world, whether the gate rule flagged any group when every group has the same true accuracy."""
    rng = np.random.default_rng(seed)
    hits = rng.binomial(n, accuracy, size=(worlds, groups))
    alarms = np.zeros(worlds, dtype=bool)
    check = SubgroupCheck(attributes=("group",))
    for w in range(worlds):
        label = np.repeat(np.array(["cat"]), groups * n)
        right = (np.arange(n)[None, :] < hits[w][:, None]).ravel()
        frame = pd.DataFrame(
            {
                "group": np.repeat(np.arange(groups).astype(str), n),
                "label": label,
                "prediction": np.where(right, "cat", "dog"),
            }
        )
        alarms[w] = check_subgroups(frame, check=check, classes=CLASSES).groups["flagged"].any()
    return alarms


def test_null_worlds_false_alarm_at_most_five_percent_plus_a_binomial_margin() -> None:
    """200 worlds of 50 groups of 100 images with the same true accuracy: a family-wise false-alarm rate
    at or under 5% (plus 3 binomial standard errors, for the 200 draws) -- bench/false_alarms.py has more."""
    alarms = null_worlds(200, 50, 100, 0.85, seed=16)
    assert alarms.mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)


def test_intersections_are_explained_for_a_lower_is_better_metric_too() -> None:
    rng = np.random.default_rng(5)
    parts = []
    for tone, light, fpr in (
        ("dark", "day", 0.35),
        ("dark", "night", 0.33),
        ("light", "day", 0.05),
        ("light", "night", 0.05),
    ):
        false_alarm = np.arange(300) < round(fpr * 300)
        rng.shuffle(false_alarm)
        label = np.array(["cat"] * 300 + ["dog"] * 100)
        prediction = np.concatenate([np.where(false_alarm, "dog", "cat"), np.array(["dog"] * 100)])
        parts.append(pd.DataFrame({"tone": tone, "light": light, "label": label, "prediction": prediction}))
    check = SubgroupCheck(attributes=("tone", "light"), metric="fpr")
    result = check_subgroups(pd.concat(parts, ignore_index=True), check=check, classes=CLASSES)
    assert [g.subject for g in result.gates if not g.passed] == ["tone=dark"]
    status = result.groups.set_index(["attribute", "group"])["status"]
    assert status[("tone&light", "dark&day")] == status[("tone&light", "dark&night")] == "explained by tone=dark"
