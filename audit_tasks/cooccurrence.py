"""Co-occurrence balance: find tag pairs a model could learn as shortcuts, before any model is trained.

A model learns "laptop" from the mouse beside it when the data almost never shows a laptop without a
mouse. For every ordered pair (a, b) that occurs together at least once -- `a` a tag, `b` a tag or an
``attribute=value`` item such as ``gender=female`` -- the check counts the 2x2 table over images and
flags the pairs where `a` almost never appears without `b`.

Counting is one sparse product: a CSR indicator matrix of images x tags (built straight from the Arrow
buffers, a tag repeated in one image counted once) transposed times the images x items matrix gives every
``n_ab`` at once. Memory is bounded by the pairs that occur, never by tags squared times images.

Flag rule (all of it must hold; thresholds from ``checks.cooccurrence``):

1. **Support**: ``n_a >= min_support`` (default 30): rare tags do not raise alarms.
2. **Strength**: the point estimate ``p_b_given_a = n_ab / n_a >= max_conditional`` (default 0.9).
3. **Confidence**: the low end of the two-sided Wilson interval on ``p_b_given_a`` at ``confidence``
   (default 0.95) is at least ``min(max_conditional, 1 - target_share)`` (default 0.8). In words: the data
   rules out, at that confidence, that "a without b" already reaches the share the curator aims for. The
   low end is not required to clear ``max_conditional`` itself, because then a perfect record at the
   minimum support (30 of 30: Wilson low end 0.886) could never flag; with the floor at 0.8, 30 of 30 and
   29 of 30 flag, 28 of 30 (low end 0.79) does not, and 27 of 30 (exactly 0.9, low end 0.74) does not.
4. **Specificity**: ``lift = p_b_given_a / p_b >= min_lift`` (default 1.5): `b` is not simply everywhere.
   A tag present in 95% of all images makes no shortcut; and for independent tags the lift stays near 1,
   so independent tags never flag. (A `b` in more than ``1 / min_lift`` of all images, 67% by default,
   can never flag.)

``npmi`` (normalised pointwise mutual information, in [-1, 1]) is reported for ranking; it is 0 where
``n_ab`` equals the number of images (every image has both: no information).

Each flagged pair says what is missing in a curator's words, e.g. "laptop without mouse: 52 of 10,405
images (0.5%); add about 2,537 images of laptop without mouse to reach 20%", where the suggested number N
is the smallest with ``(n_a_only + N) / (n_a + N) >= target_share``.

Class balance (label counts and the largest / smallest count ratio) is reported beside it with its own
gate (``max_class_imbalance``). Rows without a label are left out of the class balance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from audit_tasks.config import CooccurrenceCheck
from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.gates import GateResult

#: Value an attribute takes where the manifest leaves it null or empty.
UNKNOWN = "unknown"
#: Separator of the string form of `tags` (CSV manifests).
TAG_SEPARATOR = "|"

PAIR_COLUMNS = [
    "tag_a", "tag_b", "n_a", "n_b", "n_ab", "n_a_only", "n_b_only", "p_b_given_a", "ci_low", "ci_high",
    "lift", "npmi", "flagged", "message", "suggested_additions",
]
CLASS_BALANCE_COLUMNS = ["label", "n", "share"]


@dataclass(frozen=True)
class CooccurrenceResult:
    """The pairs table (contract's `cooccurrence.parquet`), the class balance table and their gates."""

    pairs: pd.DataFrame
    class_balance: pd.DataFrame
    gates: list[GateResult] = field(default_factory=list)
    n_rows: int = 0

    @property
    def flagged(self) -> pd.DataFrame:
        """Only the flagged pairs (they come first in `pairs`)."""
        return self.pairs[self.pairs["flagged"]]


def check_cooccurrence(
    data: pa.Table | pd.DataFrame,
    *,
    check: CooccurrenceCheck,
    attributes: Sequence[str],
    tags_column: str = "tags",
    label_column: str | None = "label",
) -> CooccurrenceResult:
    """Count every co-occurring (tag, tag) and (tag, attribute=value) pair and flag likely shortcuts.

    `data` has one row per image. `tags` is list<string> or a `|`-separated string (null or empty: no
    tags). Attribute columns are strings (null or empty: "unknown"). `label_column` (None, or a column
    the data lacks: no class balance) feeds only the class balance.

    Raises ManifestError when the tags column or an attribute column is missing or has an unusable type,
    ConfigError when a threshold cannot be used (confidence of 1).
    """
    if not 0 < check.confidence < 1:
        raise ConfigError(f"'checks.cooccurrence.confidence' must be in (0, 1); got {check.confidence}")
    available = list(data.column_names if isinstance(data, pa.Table) else map(str, getattr(data, "columns", [])))
    if tags_column not in available:
        raise ManifestError(f"co-occurrence check: no '{tags_column}' column (columns: {', '.join(available)})")
    missing = [a for a in attributes if a not in available]
    if missing:
        raise ManifestError(
            f"co-occurrence check: attribute column(s) {', '.join(map(repr, missing))} not in the data "
            f"(columns: {', '.join(available)}); fix 'checks.cooccurrence.attributes' or the manifest"
        )
    with_label = bool(label_column) and label_column in available
    table = _as_table(data, [tags_column, *attributes, *([label_column] if with_label else [])])
    n_rows = table.num_rows

    tag_names, x_tags = _tag_matrix(table.column(tags_column), n_rows, tags_column)
    attr_names, x_attrs = _attribute_matrix(table, attributes, n_rows)
    pairs = _pairs(tag_names, x_tags, attr_names, x_attrs, n_rows, check)

    gates = [
        GateResult("cooccurrence", f"{a} -> {b}", "p_b_given_a", float(p), check.max_conditional, False, msg)
        for a, b, p, msg in zip(
            pairs["tag_a"][pairs["flagged"]], pairs["tag_b"][pairs["flagged"]],
            pairs["p_b_given_a"][pairs["flagged"]], pairs["message"][pairs["flagged"]],
        )
    ]
    n_flagged = len(gates)
    if n_flagged:
        named = "; ".join(g.subject for g in gates[:5]) + ("; ..." if n_flagged > 5 else "")
        summary = f"{n_flagged:,} of {len(pairs):,} co-occurring pairs flagged: {named}"
    else:
        summary = f"no pair flagged among {len(pairs):,} co-occurring pairs in {n_rows:,} images"
    gates.append(GateResult("cooccurrence", "all pairs", "flagged_pairs", float(n_flagged), 0.0, n_flagged == 0, summary))

    class_balance = _empty_class_balance()
    if with_label:
        class_balance = _class_balance(table.column(label_column))
        if len(class_balance):
            gates.append(_class_balance_gate(class_balance, check.max_class_imbalance))
    return CooccurrenceResult(pairs=pairs, class_balance=class_balance, gates=gates, n_rows=n_rows)


# --------------------------------------------------------------------------------------------- input


def _as_table(data: pa.Table | pd.DataFrame, wanted: Sequence[str]) -> pa.Table:
    """The needed columns as an Arrow table (a DataFrame converted column by column, nothing else)."""
    if isinstance(data, pa.Table):
        return data
    if not isinstance(data, pd.DataFrame):
        raise ManifestError(f"co-occurrence check: expected a pyarrow Table or pandas DataFrame, got {type(data).__name__}")
    columns: dict[str, pa.Array] = {}
    for name in dict.fromkeys(wanted):
        try:
            columns[name] = pa.array(data[name], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise ManifestError(
                f"co-occurrence check: column '{name}' mixes types Arrow cannot read as one column: {exc}"
            ) from exc
    return pa.table(columns)


def _contiguous(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def _tag_matrix(column: pa.ChunkedArray, n_rows: int, name: str) -> tuple[np.ndarray, sp.csr_matrix]:
    """Images x tags 0/1 CSR matrix and the tag names, from list<string> or `|`-separated strings."""
    arr = _contiguous(column)
    if pa.types.is_null(arr.type):
        arr = pa.array([None] * len(arr), type=pa.list_(pa.string()))
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.split_pattern(arr, TAG_SEPARATOR)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise ManifestError(
            f"co-occurrence check: column '{name}' must be a list of strings or a '|'-separated string; "
            f"got {arr.type}"
        )
    values = pc.list_flatten(arr)
    parents = pc.list_parent_indices(arr)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.string())
    values = pc.utf8_trim_whitespace(values)
    keep = pc.fill_null(pc.greater(pc.utf8_length(values), 0), False)
    values = values.filter(keep)
    parents = parents.filter(keep)
    encoded = values.dictionary_encode()
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    cols = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    rows = parents.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return names, _indicator(rows, cols, (n_rows, len(names)))


def _indicator(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """0/1 CSR matrix; duplicates (a tag repeated in one row) collapse to a single 1."""
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1
    return matrix


def _attribute_matrix(table: pa.Table, attributes: Sequence[str], n_rows: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """Images x `attribute=value` CSR matrix (one 1 per image and attribute; null/empty -> unknown)."""
    names: list[str] = []
    rows_parts: list[np.ndarray] = []
    cols_parts: list[np.ndarray] = []
    row_ids = np.arange(n_rows, dtype=np.int32)
    for attribute in dict.fromkeys(attributes):
        values = _attribute_values(table.column(attribute))
        encoded = values.dictionary_encode()
        offset = len(names)
        names.extend(f"{attribute}={v}" for v in encoded.dictionary.to_pylist())
        rows_parts.append(row_ids)
        cols_parts.append(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32) + offset)
    rows = np.concatenate(rows_parts) if rows_parts else np.empty(0, np.int32)
    cols = np.concatenate(cols_parts) if cols_parts else np.empty(0, np.int32)
    return np.asarray(names, dtype=object), _indicator(rows, cols, (n_rows, len(names)))


def _attribute_values(column: pa.ChunkedArray) -> pa.Array:
    """Trimmed string values with null and empty replaced by UNKNOWN."""
    arr = _contiguous(column)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    arr = pc.utf8_trim_whitespace(arr)
    empty = pc.fill_null(pc.equal(pc.utf8_length(arr), 0), True)
    return pc.if_else(empty, pa.scalar(UNKNOWN, arr.type), arr)


# --------------------------------------------------------------------------------------------- pairs


def _pairs(tag_names: np.ndarray, x_tags: sp.csr_matrix, attr_names: np.ndarray, x_attrs: sp.csr_matrix,
           n_rows: int, check: CooccurrenceCheck) -> pd.DataFrame:
    """All co-occurring ordered pairs with their statistics and flags, flagged first then by npmi."""
    item_names = np.concatenate([tag_names, attr_names]) if len(attr_names) else tag_names
    x_items = sp.hstack([x_tags, x_attrs], format="csr") if len(attr_names) else x_tags
    item_counts = np.diff(x_items.tocsc().indptr).astype(np.int64)
    counts = (x_tags.T.tocsr() @ x_items).tocoo()
    a = counts.row.astype(np.int64)
    b = counts.col.astype(np.int64)
    n_ab = counts.data.astype(np.int64)
    keep = (a != b) & (n_ab > 0)
    a, b, n_ab = a[keep], b[keep], n_ab[keep]
    n_a = item_counts[a]
    n_b = item_counts[b]

    p = n_ab / n_a
    z = NormalDist().inv_cdf(0.5 + check.confidence / 2)
    ci_low, ci_high = _wilson(n_ab, n_a, z)
    total = float(max(n_rows, 1))
    lift = n_ab * total / (n_a * n_b)
    p_ab = n_ab / total
    with np.errstate(divide="ignore", invalid="ignore"):
        npmi = np.where(p_ab < 1, np.log(lift) / -np.log(p_ab), 0.0)
    floor = min(check.max_conditional, 1.0 - check.target_share)
    flagged = (
        (n_a >= check.min_support) & (p >= check.max_conditional) & (ci_low >= floor - 1e-12)
        & (lift >= check.min_lift)
    )
    order = np.lexsort((b, a, -npmi, ~flagged))
    a, b, n_ab, n_a, n_b = a[order], b[order], n_ab[order], n_a[order], n_b[order]
    p, ci_low, ci_high, lift, npmi, flagged = (
        p[order], ci_low[order], ci_high[order], lift[order], npmi[order], flagged[order]
    )
    n_a_only = n_a - n_ab
    suggested = np.zeros(len(a), dtype=np.int64)
    messages = np.full(len(a), "", dtype=object)
    for i in np.flatnonzero(flagged):
        suggested[i] = suggested_additions(int(n_a[i]), int(n_a_only[i]), check.target_share)
        messages[i] = curator_message(str(tag_names[a[i]]), str(item_names[b[i]]), int(n_a[i]), int(n_a_only[i]),
                                      int(suggested[i]), check.target_share)
    frame = pd.DataFrame(
        {
            "tag_a": tag_names[a], "tag_b": item_names[b],
            "n_a": n_a, "n_b": n_b, "n_ab": n_ab, "n_a_only": n_a_only, "n_b_only": n_b - n_ab,
            "p_b_given_a": p.astype(np.float64), "ci_low": ci_low, "ci_high": ci_high,
            "lift": lift.astype(np.float64), "npmi": npmi.astype(np.float64), "flagged": flagged.astype(bool),
            "message": messages, "suggested_additions": suggested,
        },
        columns=PAIR_COLUMNS,
    )
    frame["tag_a"] = frame["tag_a"].astype("str")
    frame["tag_b"] = frame["tag_b"].astype("str")
    frame["message"] = frame["message"].astype("str")
    return frame


def _wilson(successes: np.ndarray, trials: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Wilson score interval, vectorised; trials are all positive here."""
    n = trials.astype(np.float64)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def suggested_additions(n_a: int, n_a_only: int, target_share: float) -> int:
    """Smallest N with (n_a_only + N) / (n_a + N) >= target_share: images of "a without b" to add."""
    if target_share >= 1:
        raise ConfigError("'checks.cooccurrence.target_share' must be below 1 to suggest additions")
    needed = (target_share * n_a - n_a_only) / (1.0 - target_share)
    n = max(0, math.ceil(needed - 1e-9))
    while n > 0 and (n_a_only + n - 1) >= target_share * (n_a + n - 1):  # guard against float round-up
        n -= 1
    return n


def curator_message(tag_a: str, tag_b: str, n_a: int, n_a_only: int, additions: int, target_share: float) -> str:
    """The sentence a data curator acts on, e.g. "laptop without mouse: 52 of 10,405 images (0.5%); ..."."""
    what = f"{tag_a} without {tag_b}"
    share = n_a_only / n_a if n_a else 0.0
    return (
        f"{what}: {n_a_only:,} of {n_a:,} images ({share:.1%}); "
        f"add about {additions:,} images of {what} to reach {target_share * 100:g}%"
    )


# --------------------------------------------------------------------------------------------- labels


def _empty_class_balance() -> pd.DataFrame:
    return pd.DataFrame({"label": pd.Series([], dtype="str"), "n": pd.Series([], dtype="int64"),
                         "share": pd.Series([], dtype="float64")})


def _class_balance(column: pa.ChunkedArray) -> pd.DataFrame:
    """Label counts and shares, largest first (rows without a label are left out)."""
    arr = _contiguous(column)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    arr = pc.utf8_trim_whitespace(arr)
    arr = arr.filter(pc.fill_null(pc.greater(pc.utf8_length(arr), 0), False))
    if len(arr) == 0:
        return _empty_class_balance()
    counts = pc.value_counts(arr)
    labels = np.asarray(counts.field("values").to_pylist(), dtype=object)
    n = counts.field("counts").to_numpy().astype(np.int64)
    order = np.lexsort((labels.astype(str), -n))
    frame = pd.DataFrame({"label": labels[order], "n": n[order], "share": n[order] / n.sum()})
    frame["label"] = frame["label"].astype("str")
    return frame


def _class_balance_gate(balance: pd.DataFrame, max_ratio: float) -> GateResult:
    largest, smallest = balance.iloc[0], balance.iloc[-1]
    ratio = float(largest["n"]) / float(smallest["n"])
    detail = (
        f"largest class {largest['label']} ({int(largest['n']):,} images) is {ratio:.1f}x the smallest "
        f"{smallest['label']} ({int(smallest['n']):,}); allowed up to {max_ratio:g}x"
    )
    return GateResult("class_balance", "labels", "imbalance_ratio", ratio, max_ratio, ratio <= max_ratio, detail)
