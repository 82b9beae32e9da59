"""Co-occurrence balance: find tag pairs a model could learn as shortcuts, before any model is trained.

A model learns "laptop" from the mouse beside it when the data almost never shows a laptop without a
mouse. For every ordered pair (a, b) that occurs together at least once -- `a` a tag, `b` a tag or an
``attribute=value`` item such as ``gender=female`` -- the check counts the 2x2 table over images and
flags the pairs where `a` almost never appears without `b`.

Counting works on a CSR indicator matrix of images x tags, built straight from the Arrow buffers (strings
hashed once, a tag repeated in one image counted once), and one code per image and attribute. For a
vocabulary whose tags x items grid has at most 4M cells (32 MB of counts; about 2,000 tags) the counts are
bincounts of pair keys generated per group of equally long rows (about 7x faster than scipy's sparse
product here); larger vocabularies use the one sparse product ``X_tags.T @ X_items``, whose memory is
bounded by the pairs that occur. Neither path loops in Python per image or holds tags squared times images.

Flag rule (all of it must hold; thresholds from ``checks.cooccurrence``):

1. **Support**: ``n_a >= min_support`` (default 30): rare tags do not raise alarms.
2. **Strength**: the point estimate ``p_b_given_a = n_ab / n_a >= max_conditional`` (default 0.9).
3. **Confidence**: a one-sided score test establishes ``p_b_given_a > min(max_conditional, 1 - target_share)``
   (default 0.8), with Holm's step-down over every pair tested (``n_a >= min_support``) at family-wise
   level ``(1 - confidence) / 2`` (default 0.025): a run over 400 tags, with far more pairs, false-alarms no
   more often than one over 10 (bench/false_alarms.py). For one pair this is exactly "the low end of the
   two-sided Wilson interval on ``p_b_given_a`` at ``confidence`` is at least the floor" (Wilson inverts
   the score test); ``ci_low``/``ci_high`` report that unadjusted interval. In words: the data
   rules out, at that confidence, that "a without b" already reaches the share the curator aims for. The
   low end is not required to clear ``max_conditional`` itself, because then a perfect record at the
   minimum support (30 of 30: Wilson low end 0.886) could never flag; with the floor at 0.8, 30 of 30 and
   (in a family of one pair) 29 of 30 flag, 28 of 30 (low end 0.79) does not, and 27 of 30 (exactly 0.9,
   low end 0.74) does not.
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

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from audit_tasks.config import CooccurrenceCheck
from audit_tasks.errors import ConfigError, ManifestError
from audit_tasks.gates import GateResult
from audit_tasks.stats import holm_adjust, wilson_exceedance_pvalue, wilson_interval

#: Value an attribute takes where the manifest leaves it null or empty.
UNKNOWN = "unknown"
#: Separator of the string form of `tags` (CSV manifests).
TAG_SEPARATOR = "|"

PAIR_COLUMNS = [
    "tag_a",
    "tag_b",
    "n_a",
    "n_b",
    "n_ab",
    "n_a_only",
    "n_b_only",
    "p_b_given_a",
    "ci_low",
    "ci_high",
    "lift",
    "npmi",
    "flagged",
    "message",
    "suggested_additions",
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
    ConfigError when a threshold cannot be used (a confidence or target share of 1).
    """
    if not 0 < check.confidence < 1:
        raise ConfigError(f"'checks.cooccurrence.confidence' must be in (0, 1); got {check.confidence}")
    if not 0 < check.target_share < 1:
        raise ConfigError(f"'checks.cooccurrence.target_share' must be in (0, 1); got {check.target_share}")
    available = list(data.column_names if isinstance(data, pa.Table) else map(str, getattr(data, "columns", [])))
    if tags_column not in available:
        raise ManifestError(f"co-occurrence check: no '{tags_column}' column (columns: {', '.join(available)})")
    missing = [a for a in attributes if a not in available]
    if missing:
        raise ManifestError(
            f"co-occurrence check: attribute column(s) {', '.join(map(repr, missing))} not in the data "
            f"(columns: {', '.join(available)}); fix 'checks.cooccurrence.attributes' or the manifest"
        )
    label = label_column if label_column and label_column in available else None
    table = _as_table(data, [tags_column, *attributes, *([label] if label else [])])
    n_rows = table.num_rows

    tag_names, x_tags = _tag_matrix(table.column(tags_column), n_rows, tags_column)
    attr_names, attr_codes = _attribute_codes(table, attributes)
    pairs = _pairs(tag_names, x_tags, attr_names, attr_codes, n_rows, check)

    gates = [
        GateResult("cooccurrence", f"{a} -> {b}", "p_b_given_a", float(p), check.max_conditional, False, msg)
        for a, b, p, msg in zip(
            pairs["tag_a"][pairs["flagged"]],
            pairs["tag_b"][pairs["flagged"]],
            pairs["p_b_given_a"][pairs["flagged"]],
            pairs["message"][pairs["flagged"]],
            strict=True,
        )
    ]
    n_flagged = len(gates)
    if n_flagged:
        named = "; ".join(g.subject for g in gates[:5]) + ("; ..." if n_flagged > 5 else "")
        summary = f"{n_flagged:,} of {len(pairs):,} co-occurring pairs flagged: {named}"
    else:
        summary = f"no pair flagged among {len(pairs):,} co-occurring pairs in {n_rows:,} images"
    # Judged when some tag had the support to be flagged at all; below min_support nothing could be.
    judged = bool(n_flagged) or bool(np.any(np.asarray(pairs["n_a"]) >= check.min_support))
    if not judged:
        summary = f"too few to judge: no tag appears in {check.min_support:,} images (min_support) among {n_rows:,}"
    gates.append(
        GateResult(
            "cooccurrence", "all pairs", "flagged_pairs", float(n_flagged), 0.0, n_flagged == 0, summary, judged=judged
        )
    )

    class_balance = _empty_class_balance()
    if label:
        class_balance = _class_balance(table.column(label))
        if len(class_balance):
            gates.append(_class_balance_gate(class_balance, check.max_class_imbalance))
    return CooccurrenceResult(pairs=pairs, class_balance=class_balance, gates=gates, n_rows=n_rows)


# --------------------------------------------------------------------------------------------- input


def _as_table(data: pa.Table | pd.DataFrame, wanted: Sequence[str]) -> pa.Table:
    """The needed columns as an Arrow table (a DataFrame converted column by column, nothing else)."""
    if isinstance(data, pa.Table):
        return data
    if not isinstance(data, pd.DataFrame):
        raise ManifestError(
            f"co-occurrence check: expected a pyarrow Table or pandas DataFrame, got {type(data).__name__}"
        )
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
    return column


def _encode(values: pa.Array, *, empty_as: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Codes (int64, -1 for dropped) and sorted names of string values, trimmed.

    Values are hashed once; trimming and the treatment of empty/null values (dropped, or replaced by
    `empty_as`) happen on the small dictionary, then map back to the codes with one take.
    """
    if not pa.types.is_dictionary(values.type):
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            values = values.cast(pa.string())
        values = values.dictionary_encode()
    raw_names = values.dictionary
    if not (pa.types.is_string(raw_names.type) or pa.types.is_large_string(raw_names.type)):
        raw_names = raw_names.cast(pa.string())
    clean = pc.utf8_trim_whitespace(raw_names.fill_null("")).to_numpy(zero_copy_only=False).astype(object)
    if values.null_count:
        clean = np.append(clean, "")  # the slot null values point to
    if empty_as is not None:
        clean[clean == ""] = empty_as
    valid = clean != ""
    names, inverse = np.unique(clean[valid], return_inverse=True)
    remap = np.full(len(raw_names) + 1, -1, dtype=np.int32 if len(raw_names) < 2**31 - 1 else np.int64)
    remap[np.flatnonzero(valid)] = inverse
    indices = values.indices.fill_null(len(raw_names)) if values.null_count else values.indices
    raw_codes = indices.to_numpy(zero_copy_only=False)
    return remap[raw_codes], names.astype(object)


def _tag_matrix(column: pa.ChunkedArray, n_rows: int, name: str) -> tuple[np.ndarray, sp.csr_matrix]:
    """Images x tags 0/1 CSR matrix (canonical: sorted, a repeated tag counted once) and the tag names."""
    arr = _contiguous(column)
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        arr = pa.nulls(len(arr), type=pa.list_(pa.string()))
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = pc.split_pattern(arr, TAG_SEPARATOR)
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise ManifestError(
            f"co-occurrence check: column '{name}' must be a list of strings or a '|'-separated string; got {arr.type}"
        )
    codes, names = _encode(pc.list_flatten(arr), empty_as=None)
    # list_flatten concatenates the non-null lists in order, so the lists' lengths give CSR row pointers.
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    keep = codes >= 0
    if not keep.all():  # empty or null tag strings: drop them and recount the row pointers
        kept_before = np.zeros(len(codes) + 1, dtype=np.int64)
        np.cumsum(keep, out=kept_before[1:])
        indptr = kept_before[indptr]
        codes = codes[keep]
    index_type = np.int32 if len(names) < 2**31 and len(codes) < 2**31 else np.int64
    matrix = sp.csr_matrix(
        (
            np.ones(len(codes), dtype=np.int32),
            codes.astype(index_type, copy=False),
            indptr.astype(index_type, copy=False),
        ),
        shape=(n_rows, len(names)),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1
    return names, matrix


def _attribute_codes(table: pa.Table, attributes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per image, one item code per attribute (an n_rows x k matrix, codes offset across attributes)."""
    names: list[str] = []
    columns: list[np.ndarray] = []
    for attribute in dict.fromkeys(attributes):
        codes, values = _encode(_contiguous(table.column(attribute)), empty_as=UNKNOWN)
        columns.append(codes + len(names))
        names.extend(f"{attribute}={v}" for v in values)
    matrix = np.column_stack(columns) if columns else np.empty((table.num_rows, 0), dtype=np.int64)
    return np.asarray(names, dtype=object), matrix


# --------------------------------------------------------------------------------------------- pairs

#: Largest tags x items grid counted with a dense accumulator (8 bytes a cell: 32 MB). Larger
#: vocabularies use the sparse product, whose memory is bounded by the pairs that occur.
_DENSE_CELLS = 1 << 22
#: Pair keys generated at once by the dense path (4 bytes each).
_KEYS_PER_CHUNK = 1 << 22


def _count_pairs(
    x_tags: sp.csr_matrix, attr_codes: np.ndarray, n_attr_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, n_ab) for every ordered pair with n_ab > 0, a != b; b indexes tags then attribute items."""
    n_tags = x_tags.shape[1]
    n_items = n_tags + n_attr_items
    if n_tags * n_items <= _DENSE_CELLS:
        counts = _dense_counts(x_tags, attr_codes, n_attr_items)
        a, b = np.nonzero(counts)
        return a.astype(np.int64), b.astype(np.int64), counts[a, b].astype(np.int64)
    n_rows, k = attr_codes.shape
    x_items = x_tags
    if k:
        x_attrs = sp.csr_matrix(
            (np.ones(n_rows * k, dtype=np.int32), attr_codes.ravel(), np.arange(0, n_rows * k + 1, k)),
            shape=(n_rows, n_attr_items),
        )
        x_items = sp.hstack([x_tags, x_attrs], format="csr")
    product = x_tags.T.tocsr() @ x_items
    product.sort_indices()  # (a, b) in order, as the dense path gives them
    product = product.tocoo()
    keep = (product.row != product.col) & (product.data > 0)
    return product.row[keep].astype(np.int64), product.col[keep].astype(np.int64), product.data[keep].astype(np.int64)


def _dense_counts(x_tags: sp.csr_matrix, attr_codes: np.ndarray, n_attr_items: int) -> np.ndarray:
    """Tags x items co-occurrence counts for a small vocabulary, by bincounts over pair keys.

    Rows are grouped by their number of tags l; each group is an (images x l) block of sorted tag codes,
    whose l(l-1)/2 column pairs give the upper triangle of tag x tag counts with no Python loop per row.
    """
    n_tags = x_tags.shape[1]
    key_type = np.int32 if n_tags * max(n_tags, n_attr_items) < 2**31 else np.int64
    indptr, indices = x_tags.indptr, x_tags.indices.astype(key_type, copy=False)
    lengths = np.diff(indptr)
    per_length = np.bincount(lengths)
    small = len(per_length) <= np.iinfo(np.int16).max  # then numpy's stable sort is a radix sort
    by_length = np.argsort(lengths.astype(np.int16) if small else lengths, kind="stable")
    group_end = np.cumsum(per_length)
    upper = np.zeros(n_tags * n_tags, dtype=np.int64)
    for length in np.flatnonzero(per_length[2:]) + 2:
        starts = indptr[by_length[group_end[length] - per_length[length] : group_end[length]]]
        p, q = np.triu_indices(int(length), 1)
        step = max(1, _KEYS_PER_CHUNK // len(p))  # bounds the keys held at once
        for first in range(0, len(starts), step):
            block = indices[starts[first : first + step, None] + np.arange(length)]
            keys = (block[:, p] * key_type(n_tags) + block[:, q]).ravel()
            upper += np.bincount(keys, minlength=n_tags * n_tags)
    upper = upper.reshape(n_tags, n_tags)
    tag_tag = upper + upper.T
    if not n_attr_items:
        return tag_tag
    entry_rows = np.repeat(np.arange(len(lengths)), lengths)
    tag_attr = np.zeros(n_tags * n_attr_items, dtype=np.int64)
    for column in attr_codes.T:
        item = column.astype(key_type)[entry_rows]
        tag_attr += np.bincount(indices * key_type(n_attr_items) + item, minlength=n_tags * n_attr_items)
    return np.hstack([tag_tag, tag_attr.reshape(n_tags, n_attr_items)])


def _established(n_ab: np.ndarray, n_a: np.ndarray, floor: float, tested: np.ndarray, confidence: float) -> np.ndarray:
    """Rule 3 with Holm over the tested pairs: P(b | a) > floor at family-wise level (1 - confidence) / 2.

    One-sided score test per pair (its p-value is below alpha exactly when the one-sided Wilson lower bound
    at 1 - alpha is above the floor; stats.wilson_exceedance_pvalue), Holm's step-down over every pair with
    ``n_a >= min_support``. The level is the lower tail of the two-sided interval at ``confidence``, so a
    family of one pair flags exactly as the plain interval rule did.
    """
    out = np.zeros(len(n_a), dtype=bool)
    idx = np.flatnonzero(tested)
    if idx.size:
        pvalues = wilson_exceedance_pvalue(n_ab[idx], n_a[idx], floor)
        out[idx] = holm_adjust(pvalues) <= (1 - confidence) / 2
    return out


def _pairs(
    tag_names: np.ndarray,
    x_tags: sp.csr_matrix,
    attr_names: np.ndarray,
    attr_codes: np.ndarray,
    n_rows: int,
    check: CooccurrenceCheck,
) -> pd.DataFrame:
    """All co-occurring ordered pairs with their statistics and flags, flagged first then by npmi."""
    item_names = np.concatenate([tag_names, attr_names])
    item_counts = np.concatenate(
        [
            np.bincount(x_tags.indices, minlength=len(tag_names)),
            np.bincount(attr_codes.ravel(), minlength=len(attr_names)),
        ]
    ).astype(np.int64)
    a, b, n_ab = _count_pairs(x_tags, attr_codes, len(attr_names))
    n_a = item_counts[a]
    n_b = item_counts[b]

    p = n_ab / n_a
    ci_low, ci_high = wilson_interval(n_ab, n_a, check.confidence)
    total = float(max(n_rows, 1))
    lift = n_ab * total / (n_a * n_b)
    p_ab = n_ab / total
    with np.errstate(divide="ignore", invalid="ignore"):
        npmi = np.where(p_ab < 1, np.log(lift) / -np.log(p_ab), 0.0)
    floor = min(check.max_conditional, 1.0 - check.target_share)
    flagged = (n_a >= check.min_support) & (p >= check.max_conditional) & (lift >= check.min_lift)
    flagged &= _established(n_ab, n_a, floor, n_a >= check.min_support, check.confidence)
    # Pairs arrive sorted by (a, b) codes, which follow the sorted names: stable sorts keep that as the tie-break.
    order = np.argsort(-npmi, kind="stable")
    order = np.concatenate([order[flagged[order]], order[~flagged[order]]])
    a, b, n_ab, n_a, n_b = a[order], b[order], n_ab[order], n_a[order], n_b[order]
    p, ci_low, ci_high, lift, npmi = p[order], ci_low[order], ci_high[order], lift[order], npmi[order]
    n_flagged = int(flagged.sum())
    n_a_only = n_a - n_ab
    suggested = np.zeros(len(a), dtype=np.int64)
    messages = [""]
    for i in range(n_flagged):
        suggested[i] = suggested_additions(int(n_a[i]), int(n_a_only[i]), check.target_share)
        messages.append(
            curator_message(
                str(tag_names[a[i]]),
                str(item_names[b[i]]),
                int(n_a[i]),
                int(n_a_only[i]),
                int(suggested[i]),
                check.target_share,
            )
        )
    message_index = np.zeros(len(a), dtype=np.int32)
    message_index[:n_flagged] = np.arange(1, n_flagged + 1)
    message = pa.DictionaryArray.from_arrays(message_index, pa.array(messages, type=pa.string()))
    names = pa.array(item_names.tolist(), type=pa.string())
    return pa.table(
        {
            "tag_a": names.take(a),
            "tag_b": names.take(b),
            "n_a": n_a,
            "n_b": n_b,
            "n_ab": n_ab,
            "n_a_only": n_a_only,
            "n_b_only": n_b - n_ab,
            "p_b_given_a": p,
            "ci_low": ci_low,
            "ci_high": ci_high,
            "lift": lift,
            "npmi": npmi,
            "flagged": np.arange(len(a)) < n_flagged,
            "message": message.cast(pa.string()),
            "suggested_additions": suggested,
        }
    ).to_pandas(split_blocks=True)


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
    dtypes = dict(zip(CLASS_BALANCE_COLUMNS, ["str", "int64", "float64"], strict=True))
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in dtypes.items()})


def _class_balance(column: pa.ChunkedArray) -> pd.DataFrame:
    """Label counts and shares, largest first (rows without a label are left out)."""
    codes, labels = _encode(_contiguous(column), empty_as=None)
    n = np.bincount(codes[codes >= 0], minlength=len(labels)).astype(np.int64)
    present = n > 0
    labels, n = labels[present], n[present]
    if not len(n):
        return _empty_class_balance()
    order = np.lexsort((np.arange(len(n)), -n))  # labels are sorted: ties break alphabetically
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
    # One label has no balance to judge.
    return GateResult(
        "class_balance",
        "labels",
        "imbalance_ratio",
        ratio,
        max_ratio,
        ratio <= max_ratio,
        detail,
        judged=len(balance) >= 2,
    )


# --------------------------------------------------------------------------------------------- image properties

#: Gate subject of the label -> image-property family's summary gate.
PROPERTY_PAIRS_SUBJECT = "labels -> image properties"


def check_label_properties(labels: pd.Series, bins: pd.DataFrame, *, check: CooccurrenceCheck) -> CooccurrenceResult:
    """Property-bin -> label pairs ("brightness=q5 -> label=wolf"), flagged by the same rule as tag pairs.

    The direction is bin -> label: "nearly every image in the brightest fifth is a wolf" is what a model
    can learn from. The other direction cannot work with quantile bins: a bin holds 1/bins of the images,
    so P(bin | label) is at most 1 / (bins x the label's share) and could flag only rare classes.

    Each image appears once per property (the column of `bins`, from
    audit_tasks.image_properties.bin_properties) with that property's bin as its one tag and its label as
    the attribute `label`, so only bin -> label pairs are counted: no bin x bin pairs (width and aspect
    would always go together) and no tag pairs, which would dilute Holm's correction. P(b | a) and lift are
    those over images (each image counts once per property, with the same label); `n_b`, `n_b_only` and
    `npmi` are recomputed over images. The family is corrected on its own; its summary gate is
    `PROPERTY_PAIRS_SUBJECT`. No class balance (the main check reports it).
    """
    k, n_images = len(bins.columns), len(bins)
    label_text = pd.Series(
        [None if label is None or label != label or str(label) == "" else str(label) for label in labels], dtype=object
    )
    tags: list[list[str]] = []
    for name in bins.columns:
        tags.extend([] if cell is None or cell != cell else [f"{name}={cell}"] for cell in bins[name].tolist())
    frame = pd.DataFrame({"tags": tags, "label": pd.concat([label_text] * k, ignore_index=True) if k else label_text})
    result = check_cooccurrence(frame, check=check, attributes=["label"], label_column=None)
    pairs = result.pairs.copy()
    if k and len(pairs):
        pairs["n_b"] = pairs["n_b"] // k
        pairs["n_b_only"] = pairs["n_b"] - pairs["n_ab"]
        p_ab = pairs["n_ab"] / n_images
        lift = pairs["n_ab"] * n_images / (pairs["n_a"] * pairs["n_b"])
        with np.errstate(divide="ignore", invalid="ignore"):
            pairs["npmi"] = np.where(p_ab < 1, np.log(lift) / -np.log(p_ab), 0.0)
    gates = [
        dataclasses.replace(
            g, subject=PROPERTY_PAIRS_SUBJECT, detail=g.detail.replace("co-occurring pairs", "property -> label pairs")
        )
        if g.subject == "all pairs"
        else g
        for g in result.gates
    ]
    return dataclasses.replace(result, pairs=pairs, gates=gates, n_rows=n_images)


def pair_gate_names(pairs: pd.DataFrame) -> list[str]:
    """The gate name of every pair in a co-occurrence table: a pair has a gate row only when flagged, but a
    waiver or a warning may name any pair (then it is stale, not unknown)."""
    return [f"cooccurrence/{a} -> {b}/p_b_given_a" for a, b in zip(pairs["tag_a"], pairs["tag_b"], strict=True)]


def merge_results(main: CooccurrenceResult, extra: CooccurrenceResult) -> CooccurrenceResult:
    """The main check's result with another family's pairs and gates added (flagged pairs still first)."""
    pairs = pd.concat([main.pairs, extra.pairs], ignore_index=True)
    pairs = pairs.sort_values("flagged", ascending=False, kind="stable").reset_index(drop=True)
    return dataclasses.replace(main, pairs=pairs, gates=[*main.gates, *extra.gates])
