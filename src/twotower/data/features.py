"""Side features keyed by external user / item id -> FeatureTable rows aligned with codes.

Generic: categorical (single-valued), multi-valued categorical (`a|b|c` in one cell) and dense
columns from any table or file with an id column, described by FeatureSpecs or guessed from the
column types (`infer_source`). MovieLens: `u.item` (19 binary genre columns) and
`movies.csv` (`|`-separated genres), `u.user` / `users.dat` (age, gender, occupation, zip prefix).
Code 0 of every categorical feature means missing: an entity absent from the feature file, or an
empty value; real values get codes 1..K in ascending order of their text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from twotower.data.csr import CSR
from twotower.data.io import COLUMN_ALIASES, open_source
from twotower.data.types import DataError, FeatureTable
from twotower.data.vocab import Vocabulary, encode_ids

FEATURE_KINDS = ("categorical", "multi", "dense")
ML_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # the MovieLens-1M age groups: <18, 18-24, ..., 56+
_MISSING = ("", "(no genres listed)")


@dataclass(frozen=True)
class FeatureSpec:
    """One feature to build.

    Attributes:
        name: feature name in the FeatureTable.
        kind: "categorical", "multi" (several values in one cell, split on `sep`) or "dense".
        columns: source column(s); default `(name,)`. Dense features may take several (-> [n, d]).
        sep: separator of multi-valued cells.
        buckets: for a categorical feature over a numeric column: bin edges (value < edges[0] -> bin 0).
        prefix: for a categorical text feature: keep only the first `prefix` characters (zip codes).
        standardize: dense only: subtract the mean and divide by the std over known rows.
    """

    name: str
    kind: str
    columns: tuple[str, ...] = ()
    sep: str = "|"
    buckets: tuple[float, ...] | None = None
    prefix: int | None = None
    standardize: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {FEATURE_KINDS}, got {self.kind!r}")
        if not self.columns:
            object.__setattr__(self, "columns", (self.name,))
        if self.kind != "dense" and len(self.columns) != 1:
            raise ValueError(f"feature {self.name!r}: a {self.kind} feature reads exactly one column")


@dataclass(frozen=True)
class FeatureSource:
    """Where features come from: a file or table with one row per entity, its id column, the specs.
    `source=None` means the interaction table itself (its first row per entity is used)."""

    source: str | os.PathLike | pa.Table | None
    key: str
    specs: tuple[FeatureSpec, ...] = field(default_factory=tuple)
    delimiter: str | None = None


def build_features(
    keys: object, table: pa.Table, specs: list[FeatureSpec] | tuple[FeatureSpec, ...], vocab: Vocabulary
) -> FeatureTable:
    """Encodes feature columns of `table` (one row per key) into a FeatureTable aligned with `vocab`.

    Args:
        keys: [m] external id of each table row; ids unknown to `vocab` are ignored, and for an id
            present several times the first row wins.
        table: [m] rows holding the spec columns.
        specs: what to build.
        vocab: the user or item vocabulary the rows must align with.
    """
    codes = vocab.encode(keys)
    n = len(vocab)
    rows = np.flatnonzero(codes >= 0)
    if len(codes) and not len(rows) and n:
        # Every entity would get the "missing" value: a wrong key column or id format, never intended.
        sample = [str(k) for k in (keys.to_pylist() if hasattr(keys, "to_pylist") else list(keys))[:3]]
        raise DataError(f"none of the {len(codes)} feature rows names an id of the data (keys such as {sample}; "
                        f"ids such as {[str(i) for i in list(vocab.ids[:3])]}): is the key column right?")
    order = np.lexsort((rows, codes[rows]))
    rows = rows[order]
    first = np.ones(len(rows), dtype=np.bool_)
    first[1:] = codes[rows][1:] != codes[rows][:-1]
    rows = rows[first]  # table row of each known entity, once
    target = codes[rows].astype(np.int64)
    sub = table.take(pa.array(rows))
    categorical: dict[str, tuple[np.ndarray, int]] = {}
    multi: dict[str, tuple[CSR, int]] = {}
    dense: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    for spec in specs:
        for col in spec.columns:
            if col not in table.column_names:
                raise DataError(f"feature {spec.name!r}: no column {col!r}; the columns are {table.column_names}")
        if spec.kind == "categorical":
            row_codes, vocab_k = _categorical_values(sub.column(spec.columns[0]), spec)
            arr = np.zeros(n, dtype=np.int32)
            arr[target] = row_codes
            categorical[spec.name] = (arr, len(vocab_k) + 1)
            values[spec.name] = vocab_k.ids
        elif spec.kind == "multi":
            lists = pc.split_pattern(_text(sub.column(spec.columns[0])), spec.sep)
            flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
            parents = target[pc.list_parent_indices(lists).to_numpy()]
            ok = pc.invert(pc.is_in(flat, value_set=pa.array(_MISSING))).to_numpy(zero_copy_only=False)
            multi[spec.name], values[spec.name] = multi_from_pairs(parents[ok], flat.filter(pa.array(ok)), n)
        else:
            known = np.stack([_numeric(sub.column(c), spec.name) for c in spec.columns], axis=1)
            if spec.standardize and len(known):
                std = known.std(axis=0)
                known = (known - known.mean(axis=0)) / np.where(std > 0, std, 1.0)
            arr = np.zeros((n, known.shape[1]), dtype=np.float32)
            arr[target] = known
            dense[spec.name] = arr
    return FeatureTable(n, categorical, multi, dense, values)


def multi_from_pairs(rows: np.ndarray, values: object, num_rows: int) -> tuple[tuple[CSR, int], np.ndarray]:
    """((CSR of 1-based value codes per row, cardinality), value of each code 1..K) from (row, value) pairs."""
    if len(rows) == 0:
        return (CSR(np.zeros(num_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)), 1), np.zeros(0, dtype=object)
    value_codes, vocab = encode_ids(values)
    return (CSR.from_pairs(rows, value_codes.astype(np.int64) + 1, num_rows), len(vocab) + 1), vocab.ids


def _text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.utf8_trim_whitespace(col.cast(pa.string()).fill_null(""))


def _categorical_values(col: pa.ChunkedArray, spec: FeatureSpec) -> tuple[np.ndarray, Vocabulary]:
    """1-based codes [m] (0 for empty) and the vocabulary of the values."""
    if spec.buckets is not None:
        nums = _numeric(col, spec.name, fill=np.nan)
        edges = np.asarray(spec.buckets, dtype=np.float64)
        bins = np.searchsorted(edges, nums, side="right")
        between = [f"[{a:g},{b:g})" for a, b in zip(edges[:-1], edges[1:], strict=True)]
        labels = np.array([f"<{edges[0]:g}"] + between + [f">={edges[-1]:g}"], dtype=object)
        codes = np.where(np.isnan(nums), 0, bins + 1).astype(np.int32)
        vocab = Vocabulary.__new__(Vocabulary)
        vocab._arrow = pa.array(labels, type=pa.string())
        vocab.ids = labels
        return codes, vocab
    text = _text(col)
    if spec.prefix is not None:
        text = pc.utf8_slice_codeunits(text, 0, spec.prefix)
    present = pc.not_equal(text, "").to_numpy(zero_copy_only=False)
    codes = np.zeros(len(text), dtype=np.int32)
    value_codes, vocab = encode_ids(text.filter(pa.array(present)))
    codes[present] = value_codes + 1
    return codes, vocab


def _numeric(col: pa.ChunkedArray, name: str, fill: float = 0.0) -> np.ndarray:
    """float64 [m] of a numeric or numeric-text column; empty / null -> `fill`."""
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        text = _text(col)
        bad = pc.and_(
            pc.not_equal(text, ""),
            pc.invert(pc.match_substring_regex(text, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"))
        )
        if pc.any(bad).as_py():
            example = text.filter(bad)[0].as_py()
            raise DataError(f"feature {name!r}: non-numeric value {example!r} in a dense/bucketed column")
        col = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    return col.cast(pa.float64()).fill_null(fill).to_numpy(zero_copy_only=False)


def read_table(
    path: str | os.PathLike, *, delimiter: str | None = None, names: list[str] | None = None, encoding: str = "utf8"
) -> pa.Table:
    """A whole feature file as text columns (CSV/TSV with header, or `names` for none), or Parquet."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature file not found: {path}")
    if path.suffix in (".parquet", ".pq"):
        return pq.read_table(path)
    delim = delimiter or ("\t" if path.suffix in (".tsv", ".tab") else ",")
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass the feature file inside it")
    source, d = open_source(path, delim)
    try:
        with source:
            table = pacsv.read_csv(
                source,
                read_options=pacsv.ReadOptions(column_names=names, encoding=encoding),
                parse_options=pacsv.ParseOptions(delimiter=d),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in (names or [])},
                                                     strings_can_be_null=True),
            )
    except pa.ArrowInvalid as err:  # empty file, ragged rows, bad encoding: name the file
        raise DataError(f"feature file {path}: cannot read it as a {'tab' if d == chr(9) else repr(d)}-separated table "
                        f"with a header row: {err}") from None
    if table.num_rows == 0:
        raise DataError(f"feature file {path} has no rows")
    return table


def load_features(source: FeatureSource, vocab: Vocabulary, interactions: pa.Table | None = None) -> FeatureTable:
    """Builds the FeatureTable of `source` for the entities of `vocab`."""
    if source.source is None:
        if interactions is None:
            raise ValueError("a FeatureSource without a file needs the interaction table")
        table = interactions
    elif isinstance(source.source, pa.Table):
        table = source.source
    else:
        table = read_table(source.source, delimiter=source.delimiter)
    if source.key not in table.column_names:
        raise DataError(f"feature source: no key column {source.key!r}; the columns are {table.column_names}")
    try:
        return build_features(table.column(source.key), table, source.specs, vocab)
    except DataError as err:
        if isinstance(source.source, (str, os.PathLike)):
            raise DataError(f"{source.source}: {err}") from None
        raise  # a table in memory: the caller names where it came from


def infer_specs(
    table: pa.Table, key: str, *, max_unique_share: float = 0.5, max_int_categories: int = 32
) -> tuple[FeatureSpec, ...]:
    """A FeatureSpec for each non-key column, guessed from its values.

    Floats -> dense (standardized); integers -> categorical with at most `max_int_categories` distinct
    values (codes, flags), else dense; text with a `|` -> multi-valued; other text -> categorical,
    except text that is nearly unique per row (more than `max_unique_share` of rows distinct: titles,
    URLs), which is skipped. Pass explicit FeatureSpecs where a guess is wrong.
    """
    specs = []
    for name in table.column_names:
        if name == key:
            continue
        col = table.column(name)
        t = col.type
        distinct = len(pc.unique(col.drop_null()))
        if pa.types.is_floating(t):
            specs.append(FeatureSpec(name, "dense", standardize=True))
        elif pa.types.is_integer(t):
            kind = "categorical" if distinct <= max_int_categories else "dense"
            specs.append(FeatureSpec(name, kind, standardize=kind == "dense"))
        elif pa.types.is_boolean(t):
            specs.append(FeatureSpec(name, "categorical"))
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            if pc.any(pc.match_substring(col, "|")).as_py():
                specs.append(FeatureSpec(name, "multi"))
            elif distinct <= max_unique_share * max(1, table.num_rows):
                specs.append(FeatureSpec(name, "categorical"))
    return tuple(specs)


def infer_source(source: str | os.PathLike | pa.Table, kind: str, *, delimiter: str | None = None) -> FeatureSource:
    """A FeatureSource for a feature file with a header: the key is the first column named like a
    `kind` ("user" / "item") id column (user_id, movieId, ...), else the first column; the specs
    come from `infer_specs`."""
    if kind not in ("user", "item"):
        raise ValueError(f"kind must be 'user' or 'item', got {kind!r}")
    table = source if isinstance(source, pa.Table) else read_table(source, delimiter=delimiter)
    key = next((c for c in table.column_names if c.lower() in COLUMN_ALIASES[kind]), table.column_names[0])
    specs = infer_specs(table, key)
    if not specs:
        raise DataError(f"{source if not isinstance(source, pa.Table) else '<table>'}: "
                        f"no usable feature column besides the key {key!r}")
    return FeatureSource(table, key, specs)


def movielens_item_features(path: str | os.PathLike, vocab: Vocabulary) -> FeatureTable:
    """Genres (multi-valued) and decade (categorical) from MovieLens `u.item` or `movies.csv`."""
    path = Path(path)
    if path.name.endswith(".csv"):
        table = read_table(path)
        years = pc.extract_regex(
            pc.utf8_trim_whitespace(table.column("title").combine_chunks()), r"\((?P<year>\d{4})\)$"
        )
        table = table.append_column("decade", _decade(pc.struct_field(years, "year")))
        specs = [FeatureSpec("genres", "multi", ("genres",)), FeatureSpec("decade", "categorical")]
        return build_features(table.column("movieId"), table, specs, vocab)
    names = ["item", "title", "release", "video_release", "url", *[f"g{j}" for j in range(len(ML_GENRES))]]
    table = read_table(path, delimiter="|", names=names, encoding="latin-1")
    genre_names = _genre_names(path)
    item_rows, genre_values = [], []
    for j, genre in enumerate(genre_names):  # 19 columns, not rows: each step is vectorised
        hit = np.flatnonzero(pc.equal(table.column(f"g{j}"), "1").to_numpy(zero_copy_only=False))
        item_rows.append(hit)
        genre_values.append(np.full(len(hit), genre, dtype=object))
    table = table.append_column("decade", _decade(pc.utf8_slice_codeunits(table.column("release"), -4)))
    codes = vocab.encode(table.column("item"))
    out = build_features(table.column("item"), table, [FeatureSpec("decade", "categorical")], vocab)
    rows = np.concatenate(item_rows)
    known = codes[rows] >= 0
    multi, values = multi_from_pairs(codes[rows][known], np.concatenate(genre_values)[known], len(vocab))
    return FeatureTable(out.num_rows, out.categorical, {"genres": multi}, out.dense, {**out.values, "genres": values})


def _genre_names(path: Path) -> tuple[str, ...]:
    genre_file = path.with_name("u.genre")
    if genre_file.exists():
        names = [ln.split("|")[0] for ln in genre_file.read_text(encoding="latin-1").splitlines() if ln.strip()]
        if len(names) == len(ML_GENRES):
            return tuple(names)
    return ML_GENRES


def _decade(year_text: pa.ChunkedArray | pa.Array) -> pa.Array:
    year = pc.if_else(pc.match_substring_regex(year_text, r"^\d{4}$"), year_text, pa.scalar(None, pa.string()))
    return pc.binary_join_element_wise(pc.multiply(pc.divide(year.cast(pa.int64()), 10), 10).cast(pa.string()), "s", "")


def movielens_user_features(
    path: str | os.PathLike, vocab: Vocabulary, *, age: str = "bucket", zip_prefix: int = 2
) -> FeatureTable:
    """Age (categorical buckets or a standardized dense column), gender, occupation and zip-code
    prefix (categorical) from MovieLens `u.user` (`|`) or `users.dat` (`::`, ages already bucketed)."""
    if age not in ("bucket", "dense"):
        raise ValueError(f"age must be 'bucket' or 'dense', got {age!r}")
    path = Path(path)
    if path.name.endswith(".dat"):
        names = ["user", "gender", "age", "occupation", "zip"]
        table = read_table(path, delimiter="::", names=names, encoding="latin-1")
    else:
        names = ["user", "age", "gender", "occupation", "zip"]
        table = read_table(path, delimiter="|", names=names, encoding="latin-1")
    specs = [
        (FeatureSpec("age", "dense", standardize=True) if age == "dense"
         else FeatureSpec("age", "categorical", buckets=AGE_BUCKETS)),
        FeatureSpec("gender", "categorical"),
        FeatureSpec("occupation", "categorical"),
        FeatureSpec("zip", "categorical", prefix=zip_prefix),
    ]
    return build_features(table.column("user"), table, specs, vocab)
