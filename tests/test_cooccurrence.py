"""Tests of the co-occurrence balance check (audit_tasks.cooccurrence)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import audit_tasks.cooccurrence as cooccurrence
from audit_tasks.config import CooccurrenceCheck
from audit_tasks.cooccurrence import PAIR_COLUMNS, check_cooccurrence
from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.stats import wilson_interval

DEFAULT = CooccurrenceCheck()


# ----------------------------------------------------------------------------------------- helpers


def _lists_from_bool(matrix: np.ndarray, names: list[str]) -> list[list[str]]:
    return [[names[j] for j in np.flatnonzero(row)] for row in matrix]


def _generated(seed: int, n: int = 6000) -> pd.DataFrame:
    """Independent background tags, two planted shortcuts (p~0.97), two decoys (p=0.6), a gender attribute."""
    rng = np.random.default_rng(seed)
    names, columns = [], []
    for k, rate in enumerate([0.95, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005]):
        names.append(f"bg{k}")
        columns.append(rng.random(n) < rate)
    for a, b, p_b_given_a in [
        ("laptop", "mouse", 0.98),
        ("wolf", "snow", 0.96),
        ("kayak", "river", 0.6),
        ("tent", "forest", 0.6),
    ]:
        has_a = rng.random(n) < 0.08
        has_b = np.where(has_a, rng.random(n) < p_b_given_a, rng.random(n) < 0.05)
        names += [a, b]
        columns += [has_a, has_b]
    gender = rng.choice(["female", "male"], size=n)
    return pd.DataFrame({"tags": _lists_from_bool(np.column_stack(columns), names), "gender": gender})


def _independent(seed: int, n: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rates = [0.97, 0.9, 0.6, 0.5, 0.3, 0.1, 0.05, 0.02, 0.01, 0.007, 0.006]
    matrix = np.column_stack([rng.random(n) < r for r in rates])
    return pd.DataFrame(
        {
            "tags": _lists_from_bool(matrix, [f"t{k}" for k in range(len(rates))]),
            "gender": rng.choice(["female", "male", None], size=n, p=[0.45, 0.45, 0.1]),
            "skin_tone": rng.choice(["light", "medium", "dark"], size=n, p=[0.8, 0.15, 0.05]),
        }
    )


def _flagged_pairs(result) -> set[tuple[str, str]]:
    flagged = result.pairs[result.pairs["flagged"]]
    return set(zip(flagged["tag_a"], flagged["tag_b"], strict=True))


def _pair(result, a: str, b: str) -> pd.Series:
    rows = result.pairs[(result.pairs["tag_a"] == a) & (result.pairs["tag_b"] == b)]
    assert len(rows) == 1, (a, b, len(rows))
    return rows.iloc[0]


def _brute_force(tags: list, attributes: dict[str, list]) -> dict[tuple[str, str], tuple[int, int, int]]:
    """(a, b) -> (n_a, n_b, n_ab) by plain Python sets, for every co-occurring ordered pair."""
    row_items = []
    for i, row_tags in enumerate(tags):
        tag_set = {t.strip() for t in (row_tags or []) if t and t.strip()}
        attr_set = set()
        for name, values in attributes.items():
            value = values[i]
            attr_set.add(f"{name}={value.strip() if value and value.strip() else 'unknown'}")
        row_items.append((tag_set, attr_set))
    counts: Counter = Counter()
    for tag_set, attr_set in row_items:
        counts.update(tag_set | attr_set)
    out = {}
    pair_counts: Counter = Counter()
    for tag_set, attr_set in row_items:
        for a in tag_set:
            for b in (tag_set | attr_set) - {a}:
                pair_counts[(a, b)] += 1
    for (a, b), n_ab in pair_counts.items():
        out[(a, b)] = (counts[a], counts[b], n_ab)
    return out


def _laptop_mouse_frame() -> pd.DataFrame:
    """10,405 laptop images of which 52 lack a mouse, plus 20,000 images of other things."""
    tags = [["laptop", "mouse"]] * (10_405 - 52) + [["laptop"]] * 52 + [["desk"]] * 20_000
    return pd.DataFrame({"tags": tags})


# ----------------------------------------------------------------------------------------- detection


def test_planted_pairs_are_flagged():
    result = check_cooccurrence(_generated(seed=1), check=DEFAULT, attributes=["gender"])
    flagged = _flagged_pairs(result)
    assert ("laptop", "mouse") in flagged
    assert ("wolf", "snow") in flagged


def test_decoy_pairs_with_conditional_0_6_are_not_flagged():
    result = check_cooccurrence(_generated(seed=2), check=DEFAULT, attributes=["gender"])
    for a, b in [("kayak", "river"), ("tent", "forest")]:
        row = _pair(result, a, b)
        assert 0.5 < row["p_b_given_a"] < 0.7
        assert row["lift"] > DEFAULT.min_lift  # specific, so only the conditional keeps it unflagged
        assert not row["flagged"]


def test_generated_data_flags_only_the_planted_pairs():
    for seed in range(3):
        result = check_cooccurrence(_generated(seed=seed), check=DEFAULT, attributes=["gender"])
        assert _flagged_pairs(result) == {("laptop", "mouse"), ("wolf", "snow")}, seed


@pytest.mark.parametrize("seed", range(6))
def test_independent_tags_never_flag(seed):
    result = check_cooccurrence(_independent(seed), check=DEFAULT, attributes=["gender", "skin_tone"])
    assert len(result.pairs) > 50
    assert not result.pairs["flagged"].any()


def test_tag_attribute_association_is_flagged():
    rng = np.random.default_rng(7)
    n = 4000
    is_nurse = rng.random(n) < 0.1
    female = np.where(is_nurse, rng.random(n) < 0.97, rng.random(n) < 0.45)
    frame = pd.DataFrame(
        {
            "tags": [["nurse", "scrubs"] if x else ["street"] for x in is_nurse],
            "gender": np.where(female, "female", "male"),
        }
    )
    result = check_cooccurrence(frame, check=DEFAULT, attributes=["gender"])
    row = _pair(result, "nurse", "gender=female")
    assert row["flagged"]
    assert row["message"].startswith(f"nurse without gender=female: {row['n_a_only']:,} of {row['n_a']:,} images")
    assert ("street", "gender=male") not in _flagged_pairs(result)


def test_perfect_record_flags_from_min_support_but_not_below():
    def frame(n_a: int, n_with_b: int) -> pd.DataFrame:
        tags = [["a", "b"]] * n_with_b + [["a"]] * (n_a - n_with_b) + [["c"]] * 500 + [["b", "c"]] * 50
        return pd.DataFrame({"tags": tags})

    def flagged(n_a: int, n_with_b: int) -> bool:
        result = check_cooccurrence(frame(n_a, n_with_b), check=DEFAULT, attributes=[])
        return bool(_pair(result, "a", "b")["flagged"])

    assert flagged(30, 30)
    # 29 of 30 (one-sided p 0.011) clears the plain interval but not Holm over the 4 pairs tested here
    assert not flagged(30, 29)
    assert not flagged(29, 29)  # below min_support
    assert not flagged(30, 28)  # point estimate 0.93 but the interval reaches below 0.8
    assert not flagged(30, 27)


def test_tag_present_in_almost_every_image_is_not_a_shortcut():
    tags = [["a", "sky"]] * 100 + [["sky"]] * 850 + [["ground"]] * 50
    result = check_cooccurrence(pd.DataFrame({"tags": tags}), check=DEFAULT, attributes=[])
    row = _pair(result, "a", "sky")
    assert row["p_b_given_a"] == 1.0
    assert row["lift"] < DEFAULT.min_lift
    assert not row["flagged"]


# ----------------------------------------------------------------------------------------- counts


def test_counts_match_brute_force_reference():
    rng = np.random.default_rng(3)
    vocab = ["a", "b", "c", "d", "e", "f"]
    tags = [list(rng.choice(vocab, size=rng.integers(0, 4))) for _ in range(60)]
    tags[0] = ["a", "b", "a", "a"]  # duplicated tag
    tags[1] = []  # no tags
    tags[2] = None  # null tags
    tags[3] = [" c ", "", "d"]  # padded and empty entries
    gender = list(rng.choice(["female", "male", "", None], size=60))
    frame = pd.DataFrame({"tags": tags, "gender": gender})
    result = check_cooccurrence(frame, check=DEFAULT, attributes=["gender"])
    expected = _brute_force(tags, {"gender": gender})
    got = {(r.tag_a, r.tag_b): (r.n_a, r.n_b, r.n_ab) for r in result.pairs.itertuples()}
    assert got == expected
    assert (result.pairs["n_a_only"] == result.pairs["n_a"] - result.pairs["n_ab"]).all()
    assert (result.pairs["n_b_only"] == result.pairs["n_b"] - result.pairs["n_ab"]).all()
    assert result.n_rows == 60


def test_duplicated_tag_in_a_row_counts_once():
    frame = pd.DataFrame({"tags": [["a", "a", "b"], ["a"], ["b", "b"]]})
    result = check_cooccurrence(frame, check=DEFAULT, attributes=[])
    row = _pair(result, "a", "b")
    assert (row["n_a"], row["n_b"], row["n_ab"]) == (2, 2, 1)
    assert ("a", "a") not in set(zip(result.pairs["tag_a"], result.pairs["tag_b"], strict=True))


def test_statistics_hand_computed():
    # 10 images: a in 4, b in 5, both in 3
    tags = [["a", "b"]] * 3 + [["a"]] + [["b"]] * 2 + [["c"]] * 4
    row = _pair(check_cooccurrence(pd.DataFrame({"tags": tags}), check=DEFAULT, attributes=[]), "a", "b")
    assert row["p_b_given_a"] == pytest.approx(0.75)
    assert row["lift"] == pytest.approx(0.75 / 0.5)
    assert row["npmi"] == pytest.approx(np.log(0.3 / (0.4 * 0.5)) / -np.log(0.3))
    # Wilson 95% for 3 of 4
    assert row["ci_low"] == pytest.approx(0.3006418, abs=1e-6)
    assert row["ci_high"] == pytest.approx(0.9544127, abs=1e-6)


def test_pair_interval_is_the_shared_wilson_interval_at_the_configured_confidence():
    result = check_cooccurrence(_generated(0, n=2000), check=CooccurrenceCheck(confidence=0.8), attributes=["gender"])
    low, high = wilson_interval(result.pairs["n_ab"], result.pairs["n_a"], 0.8)
    np.testing.assert_array_equal(result.pairs["ci_low"].to_numpy(), low)
    np.testing.assert_array_equal(result.pairs["ci_high"].to_numpy(), high)


def test_only_cooccurring_pairs_are_listed():
    frame = pd.DataFrame({"tags": [["a", "b"], ["c"], ["d", "e"]]})
    result = check_cooccurrence(frame, check=DEFAULT, attributes=[])
    assert set(zip(result.pairs["tag_a"], result.pairs["tag_b"], strict=True)) == {
        ("a", "b"),
        ("b", "a"),
        ("d", "e"),
        ("e", "d"),
    }
    assert (result.pairs["n_ab"] > 0).all()


def test_pipe_separated_tags_give_the_same_result_as_list_tags():
    frame = _generated(seed=4, n=3000)
    as_strings = frame.assign(tags=["|".join(t) if t else None for t in frame["tags"]])
    as_strings.loc[as_strings.index[:5], "tags"] = ""  # empty strings, like CSV cells
    frame.loc[frame.index[:5], "tags"] = None
    a = check_cooccurrence(frame, check=DEFAULT, attributes=["gender"]).pairs
    b = check_cooccurrence(as_strings, check=DEFAULT, attributes=["gender"]).pairs
    pd.testing.assert_frame_equal(a, b)


def test_arrow_table_gives_the_same_result_as_dataframe():
    frame = _generated(seed=5, n=2000)
    table = pa.table(
        {
            "tags": pa.array(frame["tags"], type=pa.list_(pa.string())),
            "gender": pa.array(frame["gender"]).dictionary_encode(),
        }
    )
    a = check_cooccurrence(frame, check=DEFAULT, attributes=["gender"]).pairs
    b = check_cooccurrence(table, check=DEFAULT, attributes=["gender"]).pairs
    pd.testing.assert_frame_equal(a, b)


def test_dictionary_encoded_chunked_input_gives_the_same_result():
    frame = _generated(seed=11, n=2000)
    halves = [frame.iloc[:700], frame.iloc[700:]]
    chunks = [  # each chunk with its own dictionary, in a different order, as Parquet row groups give them
        pa.table(
            {
                "tags": pa.array(part["tags"], type=pa.list_(pa.dictionary(pa.int32(), pa.string()))),
                "gender": pa.array(part["gender"]).dictionary_encode(),
            }
        )
        for part in (halves[0], halves[1].iloc[::-1])
    ]
    table = pa.concat_tables(chunks)
    expected = pd.concat([halves[0], halves[1].iloc[::-1]], ignore_index=True)
    a = check_cooccurrence(expected, check=DEFAULT, attributes=["gender"]).pairs
    b = check_cooccurrence(table, check=DEFAULT, attributes=["gender"]).pairs
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("attributes", [["gender"], []])
def test_sparse_product_path_matches_dense_path(monkeypatch, attributes):
    frame = _generated(seed=12, n=3000)
    dense = check_cooccurrence(frame, check=DEFAULT, attributes=attributes).pairs
    monkeypatch.setattr(cooccurrence, "_DENSE_CELLS", 0)
    sparse = check_cooccurrence(frame, check=DEFAULT, attributes=attributes).pairs
    pd.testing.assert_frame_equal(dense, sparse)


def test_chunked_pair_keys_give_the_same_counts(monkeypatch):
    frame = _generated(seed=13, n=3000)
    whole = check_cooccurrence(frame, check=DEFAULT, attributes=["gender"]).pairs
    monkeypatch.setattr(cooccurrence, "_KEYS_PER_CHUNK", 7)
    chunked = check_cooccurrence(frame, check=DEFAULT, attributes=["gender"]).pairs
    pd.testing.assert_frame_equal(whole, chunked)


_TAG = st.sampled_from(["a", "b", "c", "d", " a", "", "e f"])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.one_of(st.none(), st.lists(_TAG, max_size=6)), st.sampled_from(["x", "y", "", None])),
        max_size=25,
    ),
    dense=st.booleans(),
)
def test_counts_match_brute_force_on_arbitrary_small_data(rows, dense):
    tags = [r[0] for r in rows]
    group = [r[1] for r in rows]
    frame = pd.DataFrame({"tags": pd.Series(tags, dtype=object), "group": pd.Series(group, dtype=object)})
    limit = cooccurrence._DENSE_CELLS if dense else 0
    original, cooccurrence._DENSE_CELLS = cooccurrence._DENSE_CELLS, limit
    try:
        result = check_cooccurrence(frame, check=DEFAULT, attributes=["group"])
    finally:
        cooccurrence._DENSE_CELLS = original
    got = {(r.tag_a, r.tag_b): (r.n_a, r.n_b, r.n_ab) for r in result.pairs.itertuples()}
    assert got == _brute_force(tags, {"group": group})


def test_null_and_empty_attribute_values_count_as_unknown():
    frame = pd.DataFrame({"tags": [["a"], ["a"], ["a"], ["a"]], "gender": ["female", None, "", "  "]})
    result = check_cooccurrence(frame, check=DEFAULT, attributes=["gender"])
    assert _pair(result, "a", "gender=unknown")["n_ab"] == 3
    assert _pair(result, "a", "gender=female")["n_ab"] == 1


# ----------------------------------------------------------------------------------------- curator words


def test_curator_message_and_suggested_additions_hand_computed():
    result = check_cooccurrence(_laptop_mouse_frame(), check=DEFAULT, attributes=[])
    row = _pair(result, "laptop", "mouse")
    assert row["flagged"]
    # (52 + N) / (10,405 + N) >= 0.2  <=>  N >= (2,081 - 52) / 0.8 = 2,536.25
    assert row["suggested_additions"] == 2537
    assert row["message"] == (
        "laptop without mouse: 52 of 10,405 images (0.5%); add about 2,537 images of laptop without mouse to reach 20%"
    )


def test_unflagged_pairs_have_no_message_and_no_suggestion():
    result = check_cooccurrence(_generated(seed=6), check=DEFAULT, attributes=["gender"])
    quiet = result.pairs[~result.pairs["flagged"]]
    assert len(quiet) > 0
    assert (quiet["message"] == "").all()
    assert (quiet["suggested_additions"] == 0).all()


# ----------------------------------------------------------------------------------------- tables and gates


def test_pairs_table_has_the_contract_columns():
    result = check_cooccurrence(_laptop_mouse_frame(), check=DEFAULT, attributes=[])
    assert list(result.pairs.columns) == PAIR_COLUMNS
    assert result.pairs["flagged"].dtype == bool


def test_pairs_are_sorted_flagged_first_then_by_npmi():
    pairs = check_cooccurrence(_generated(seed=8), check=DEFAULT, attributes=["gender"]).pairs
    n_flagged = int(pairs["flagged"].sum())
    assert n_flagged > 0
    assert pairs["flagged"].iloc[:n_flagged].all()
    for part in (pairs.iloc[:n_flagged], pairs.iloc[n_flagged:]):
        assert part["npmi"].is_monotonic_decreasing


def test_gates_are_one_per_flagged_pair_plus_a_failing_summary():
    result = check_cooccurrence(_generated(seed=9), check=DEFAULT, attributes=["gender"])
    flagged = result.pairs[result.pairs["flagged"]]
    pair_gates = [g for g in result.gates if g.check == "cooccurrence" and g.subject != "all pairs"]
    assert [g.subject for g in pair_gates] == [
        f"{a} -> {b}" for a, b in zip(flagged["tag_a"], flagged["tag_b"], strict=True)
    ]
    assert [g.detail for g in pair_gates] == list(flagged["message"])
    assert pair_gates
    assert all(
        not g.passed and g.metric == "p_b_given_a" and g.threshold == DEFAULT.max_conditional for g in pair_gates
    )
    (summary,) = [g for g in result.gates if g.subject == "all pairs"]
    assert (summary.metric, summary.value, summary.threshold, summary.passed) == (
        "flagged_pairs",
        len(flagged),
        0,
        False,
    )


def test_summary_gate_passes_when_no_pair_is_flagged():
    result = check_cooccurrence(_independent(seed=0), check=DEFAULT, attributes=["gender"])
    assert [g.subject for g in result.gates if g.check == "cooccurrence"] == ["all pairs"]
    (summary,) = result.gates
    assert summary.passed and summary.value == 0


def test_class_balance_gate_fails_on_20_to_1_imbalance():
    frame = pd.DataFrame({"tags": [["x"]] * 2100, "label": ["doctor"] * 2000 + ["nurse"] * 100})
    result = check_cooccurrence(frame, check=DEFAULT, attributes=[])
    (gate,) = [g for g in result.gates if g.check == "class_balance"]
    assert (gate.subject, gate.metric, gate.value, gate.threshold) == ("labels", "imbalance_ratio", 20.0, 10.0)
    assert not gate.passed
    assert list(result.class_balance["label"]) == ["doctor", "nurse"]
    assert list(result.class_balance["n"]) == [2000, 100]
    assert result.class_balance["share"].sum() == pytest.approx(1.0)


def test_class_balance_gate_passes_on_balanced_labels():
    frame = pd.DataFrame({"tags": [["x"]] * 300, "label": ["cat", "dog", "fox"] * 100})
    result = check_cooccurrence(frame, check=DEFAULT, attributes=[])
    (gate,) = [g for g in result.gates if g.check == "class_balance"]
    assert gate.passed and gate.value == 1.0


def test_rows_without_a_label_are_left_out_of_class_balance():
    frame = pd.DataFrame({"tags": [["x"]] * 5, "label": ["cat", "dog", None, "", "cat"]})
    balance = check_cooccurrence(frame, check=DEFAULT, attributes=[]).class_balance
    assert dict(zip(balance["label"], balance["n"], strict=True)) == {"cat": 2, "dog": 1}


def test_no_label_column_means_no_class_balance_gate():
    frame = pd.DataFrame({"tags": [["x"]] * 5, "label": ["a"] * 5})
    without_column = check_cooccurrence(frame.drop(columns="label"), check=DEFAULT, attributes=[])
    label_off = check_cooccurrence(frame, check=DEFAULT, attributes=[], label_column=None)
    for result in (without_column, label_off):
        assert all(g.check != "class_balance" for g in result.gates)
        assert len(result.class_balance) == 0


def test_empty_data_gives_no_pairs_and_a_passing_summary():
    frame = pd.DataFrame({"tags": pd.Series([], dtype=object), "gender": pd.Series([], dtype=object)})
    result = check_cooccurrence(frame, check=DEFAULT, attributes=["gender"])
    assert len(result.pairs) == 0 and list(result.pairs.columns) == PAIR_COLUMNS
    assert [g.passed for g in result.gates] == [True]


def test_missing_attribute_column_raises_manifest_error_naming_it():
    frame = pd.DataFrame({"tags": [["a"]]})
    with pytest.raises(ManifestError, match="'skin_tone'"):
        check_cooccurrence(frame, check=DEFAULT, attributes=["skin_tone"])


def test_missing_tags_column_raises_manifest_error_naming_it():
    with pytest.raises(ManifestError, match="'keywords'"):
        check_cooccurrence(pd.DataFrame({"tags": [["a"]]}), check=DEFAULT, attributes=[], tags_column="keywords")


def test_confidence_of_one_raises_config_error():
    with pytest.raises(ConfigError, match="confidence"):
        check_cooccurrence(pd.DataFrame({"tags": [["a"]]}), check=CooccurrenceCheck(confidence=1.0), attributes=[])


def test_thresholds_come_from_the_check_config():
    tags = [["a", "b"]] * 9 + [["a"]] + [["c"]] * 40
    frame = pd.DataFrame({"tags": tags})
    strict = check_cooccurrence(frame, check=DEFAULT, attributes=[])
    loose = check_cooccurrence(frame, check=CooccurrenceCheck(min_support=5, target_share=0.5), attributes=[])
    assert not _pair(strict, "a", "b")["flagged"]
    assert _pair(loose, "a", "b")["flagged"]
    assert _pair(loose, "a", "b")["message"].endswith("to reach 50%")


def test_every_ordered_pair_appears_in_both_directions_for_tags():
    result = check_cooccurrence(_generated(seed=10, n=1000), check=DEFAULT, attributes=[])
    pairs = set(zip(result.pairs["tag_a"], result.pairs["tag_b"], strict=True))
    assert len(pairs) >= 200
    assert all((b, a) in pairs for a, b in itertools.islice(pairs, 200))


def test_the_confidence_rule_is_holm_over_the_pairs_tested():
    """Each pair's score-test p-value, Holm-adjusted over the pairs with n_a >= min_support (statsmodels),
    at (1 - confidence) / 2, decides rule 3: the flags follow it exactly."""
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    result = check_cooccurrence(_generated(0, n=2000), check=DEFAULT, attributes=["gender"])
    pairs = result.pairs
    tested = pairs[pairs["n_a"] >= DEFAULT.min_support]
    floor = min(DEFAULT.max_conditional, 1 - DEFAULT.target_share)
    pvalues = [
        proportion.proportions_ztest(k, n, value=floor, alternative="larger", prop_var=floor)[1]
        for k, n in zip(tested["n_ab"], tested["n_a"], strict=True)
    ]
    reject = multitest.multipletests(pvalues, alpha=(1 - DEFAULT.confidence) / 2, method="holm")[0]
    expected = reject & (tested["p_b_given_a"] >= DEFAULT.max_conditional) & (tested["lift"] >= DEFAULT.min_lift)
    assert expected.any()
    np.testing.assert_array_equal(tested["flagged"].to_numpy(), expected.to_numpy())
    assert not pairs.loc[pairs["n_a"] < DEFAULT.min_support, "flagged"].any()
