"""Readers: interaction files -> an Arrow table with canonical role columns, through pyarrow.

Formats: CSV / TSV (a header row is detected, or give column names), Parquet, MovieLens `u.data`
(tab, no header), `ratings.dat` (`::`), ml-latest `ratings.csv` (CRLF), whitespace-separated
tables, and adjacency lists (`user item item ...` per line). Gzip / bz2 files are decompressed on
the fly (by extension).

A clean file is read once, multi-threaded, with inferred types. When that read reports a malformed
row (wrong column count, a non-numeric rating or timestamp, an empty id), the file is read again
single-threaded with every column as text, so each bad row can be found with a vectorised check and
reported by line number; no row is ever handled by Python code of ours.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from twotower.data.clean import ReadReport, build_report, check_rows, exact_integers, fast_path_ok, normalise_types
from twotower.data.types import DataError

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Format:
    """How a file is laid out. `columns` gives default role -> column names."""

    kind: str  # "csv", "parquet" or "adjacency"
    delimiter: str = ","
    header: bool = True
    names: tuple[str, ...] | None = None
    columns: tuple[tuple[str, str], ...] = ()


_ML_NAMES = ("user", "item", "rating", "timestamp")
FORMATS: dict[str, Format] = {
    "csv": Format("csv", ","),
    "tsv": Format("csv", "\t"),
    "parquet": Format("parquet"),
    "adjacency": Format("adjacency"),
    "space": Format("csv", " ", header=False),
    "ml-100k": Format("csv", "\t", header=False, names=_ML_NAMES),
    "ml-1m": Format("csv", "::", header=False, names=_ML_NAMES),
    "ml-latest": Format(
        "csv", ",", columns=(("user", "userId"), ("item", "movieId"), ("rating", "rating"), ("timestamp", "timestamp"))
    ),
}

# header names recognised when `columns` leaves a role out (compared lower-case)
COLUMN_ALIASES = {
    "user": ("user", "user_id", "userid", "uid", "user id", "users", "customer_id", "visitorid"),
    "item": (
        "item", "item_id", "itemid", "iid", "movieid", "movie_id", "artistid", "product_id", "business_id", "track_id"
    ),
    "rating": ("rating", "ratings", "score", "stars"),
    "label": ("label", "click", "clicked", "target"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date", "unix_timestamp"),
}


@dataclass(frozen=True)
class InteractionTable:
    """Interactions as read: columns `user`, `item` (int64 or string), optional `rating`/`label`
    (float64) and `timestamp` (int64), then any requested side-feature columns under their names."""

    table: pa.Table
    report: ReadReport

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> pa.ChunkedArray | None:
        return self.table.column(name) if name in self.table.column_names else None


def detect_format(path: PathLike) -> str:
    """Guesses the format name from the file name and, if needed, its first line."""
    path = Path(path)
    name = path.name.lower()
    for ext in (".gz", ".bz2", ".zst", ".lz4"):
        name = name.removesuffix(ext)
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name == "u.data" or name.endswith((".base", ".test")) and name.startswith("u"):
        return "ml-100k"
    head = [ln for ln in _peek(path, 50) if ln.strip()]
    line = head[0] if head else ""
    if "::" in line:
        return "ml-1m"
    if name.endswith(".tsv") or name.endswith(".tab") or "\t" in line:
        return "tsv"
    if name.endswith(".csv") or "," in line:
        return "csv"
    # whitespace-separated: a table ("user item rating ts") when every line has the same 3+ fields,
    # else an adjacency list ("user item item ..."); with 2 fields per line both read the same
    widths = {len(ln.split()) for ln in head}
    if len(widths) == 1 and widths.pop() >= 3 and all(ln == " ".join(ln.split()) for ln in head):
        return "space"
    return "adjacency"


def _is_number(field: str) -> bool:
    try:
        float(field.strip().strip('"').strip("'"))
    except ValueError:
        return False
    return True


def detect_header(lines: list[str], delimiter: str) -> bool | None:
    """Whether the first line names the columns: False when any field of it is a number (names are
    not); True when it has a non-numeric field where the lines below are numeric (`userId` over `1`),
    or names a known column (user, item_id, rating...); None when it cannot tell (only string ids)."""
    rows = [[f.strip().strip('"') for f in (ln.split() if delimiter.isspace() else ln.split(delimiter))]
            for ln in lines if ln.strip()]
    if not rows:
        return None
    first, below = rows[0], rows[1:]
    if any(_is_number(f) for f in first if f):
        return False  # column names are not numbers: a line with one is data (string ids, a rating)
    for col, field in enumerate(first):
        if not _is_number(field) and below and all(col < len(r) and _is_number(r[col]) for r in below):
            return True
    aliases = {a for names in COLUMN_ALIASES.values() for a in names}
    if any(field.lower() in aliases for field in first):
        return True
    return None


def _open(path: Path) -> pa.NativeFile:
    return pa.input_stream(str(path), compression="detect")


def _peek(path: Path, n: int) -> list[str]:
    with _open(path) as f:
        head = f.read(1 << 14)
    return head.decode("utf-8", errors="replace").splitlines()[:n]


class _SeparatorStream(io.RawIOBase):
    """Byte stream that replaces a multi-character separator (`::`) by one byte pyarrow can split on;
    works chunk by chunk, holding back a partial separator at a chunk end."""

    def __init__(self, raw: Any, sep: bytes, repl: bytes) -> None:
        self._raw, self._sep, self._repl = raw, sep, repl
        self._pending = b""
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            chunk = self._raw.read(1 << 20)
            data = self._pending + chunk
            if not chunk:
                self._pending = b""
                self._out = data.replace(self._sep, self._repl)
                break
            keep = 0
            for k in range(len(self._sep) - 1, 0, -1):
                if data.endswith(self._sep[:k]):
                    keep = k
                    break
            self._pending = data[len(data) - keep :] if keep else b""
            self._out = (data[: len(data) - keep] if keep else data).replace(self._sep, self._repl)
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def open_source(path: Path, delimiter: str) -> tuple[Any, str]:
    """(what to hand pyarrow, single-character delimiter)."""
    if len(delimiter) == 1:
        return _open(path), delimiter
    stream = _SeparatorStream(_open(path), delimiter.encode(), b"\x1f")
    return io.BufferedReader(stream, buffer_size=1 << 20), "\x1f"


def read_interactions(
    path: PathLike,
    *,
    format: str = "auto",
    columns: dict[str, str | int] | None = None,
    names: list[str] | None = None,
    delimiter: str | None = None,
    header: bool | None = None,
    features: list[str] | tuple[str, ...] = (),
    strict: bool = False,
    encoding: str = "utf8",
) -> InteractionTable:
    """Reads one interaction file.

    Args:
        path: the file (gzip/bz2 by extension are fine).
        format: a name in `FORMATS` or "auto" (from the file name and first line).
        columns: role -> source column: roles are "user", "item" (required), "rating", "label",
            "timestamp". Names for files with a header or `names`; 0-based positions otherwise.
            Roles left out are found by common header names (userId, item_id, rating, ...).
        names: column names of a file without a header (implies header=False).
        delimiter: overrides the format's delimiter; may be several characters, like "::".
        header: overrides whether the first line is a header.
        features: further source columns to keep (side features), under their own names.
        strict: raise a DataError at the first malformed row instead of skipping it.
        encoding: text encoding of the file (e.g. "latin-1"); UTF-8 by default.

    Returns:
        The table and a ReadReport (rows read, skipped, first bad line numbers).

    Example:
        >>> t = read_interactions("ratings.csv", format="ml-latest")  # doctest: +SKIP
        >>> t.table.column_names  # doctest: +SKIP
        ['user', 'item', 'rating', 'timestamp']
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"interaction file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass the interaction file inside it")
    fmt_name = detect_format(path) if format == "auto" else format
    if format == "auto" and delimiter and FORMATS[fmt_name].kind == "adjacency":
        fmt_name = "csv"  # a given delimiter means a delimited table, whatever the first line looked like
    if fmt_name not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {sorted(FORMATS)} or 'auto'")
    try:
        return _read_any(path, fmt_name, columns, names, delimiter, header, tuple(features), strict, encoding)
    except pa.ArrowInvalid as e:  # what pyarrow itself cannot parse (bad UTF-8, broken quoting, ...)
        hint = " (pass encoding=..., e.g. 'latin-1')" if "UTF8" in str(e) or "utf8" in str(e) else ""
        raise DataError(f"{path}: cannot read as {fmt_name!r}: {_printable(str(e))}{hint}") from e
    except UnicodeDecodeError as e:  # a binary file (e.g. Parquet read as CSV) or another text encoding
        raise DataError(f"{path}: not {encoding} text as format {fmt_name!r} reads it ({e.reason} at byte {e.start}); "
                        f"is the format right, or pass the file's encoding (e.g. latin-1)?") from None


def _read_any(
    path: Path,
    fmt_name: str,
    columns: dict[str, str | int] | None,
    names: list[str] | None,
    delimiter: str | None,
    header: bool | None,
    features: tuple[str, ...],
    strict: bool,
    encoding: str,
) -> InteractionTable:
    fmt = FORMATS[fmt_name]
    if fmt.kind == "parquet":
        table = pq.read_table(path)
        return from_table(
            table, columns=columns or dict(fmt.columns), features=features, strict=strict, source=str(path)
        )
    if fmt.kind == "adjacency":
        return _read_adjacency(path, encoding, skip_header=header if header is not None else
                               bool(detect_header(_peek(path, 6), " ")))
    delim = delimiter or fmt.delimiter
    if names is not None:
        has_header = False
    else:
        has_header = fmt.header if header is None else header
        if header is None and fmt.names is None:  # the fixed MovieLens layouts never have one
            detected = detect_header(_peek(path, 6), delim)
            has_header = has_header if detected is None else detected
        names = list(fmt.names) if (fmt.names and not has_header) else None
    file_names = _column_names(path, delim, has_header, names, encoding)
    roles = _resolve_roles(file_names, {**dict(fmt.columns), **(columns or {})}, path, has_header or names is not None)
    missing = [c for c in features if c not in file_names]
    if missing:
        raise DataError(f"{path}: no column(s) {missing}; the columns are {file_names}")
    wanted = list(dict.fromkeys([*roles.values(), *features]))
    return _read_delimited(path, delim, has_header, file_names, roles, wanted, strict, encoding)


def _column_names(path: Path, delim: str, has_header: bool, names: list[str] | None, encoding: str) -> list[str]:
    with _open(path) as f:
        head_bytes = f.read(1 << 14)
    if not head_bytes.strip():
        raise DataError(f"{path} is empty")
    first = head_bytes.split(b"\n", 1)[0].rstrip(b"\r") + b"\n"
    source, d = ((io.BytesIO(first), delim) if len(delim) == 1
                 else (io.BytesIO(first.replace(delim.encode(), b"\x1f")), "\x1f"))
    head = pacsv.read_csv(
        source,
        read_options=pacsv.ReadOptions(autogenerate_column_names=not has_header, encoding=encoding),
        parse_options=pacsv.ParseOptions(delimiter=d),
        convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=False),
    )
    if has_header:
        return head.column_names
    if names is not None:
        if len(names) != head.num_columns:
            raise DataError(f"{path}: {len(names)} names given ({names}) but line 1 has {head.num_columns} columns")
        return list(names)
    return [f"f{i}" for i in range(head.num_columns)]


def _resolve_roles(file_names: list[str], columns: dict[str, str | int], path: Path, named: bool) -> dict[str, str]:
    unknown = set(columns) - set(COLUMN_ALIASES)
    if unknown:
        raise ValueError(f"unknown column role(s) {sorted(unknown)}; roles are {list(COLUMN_ALIASES)}")
    roles: dict[str, str] = {}
    for role, col in columns.items():
        if col is None:
            continue
        if isinstance(col, int):
            if not 0 <= col < len(file_names):
                raise DataError(
                    f"{path}: column position {col} for {role!r} out of range; the file has {len(file_names)} columns"
                )
            roles[role] = file_names[col]
        elif col not in file_names:
            raise DataError(f"{path}: no column named {col!r} (for {role!r}); the columns are {file_names}")
        else:
            roles[role] = col
    lower = {n.lower(): n for n in file_names}
    positional = not named or all(n.startswith("f") and n[1:].isdigit() for n in file_names)
    for i, role in enumerate(("user", "item", "rating", "timestamp")):
        if role in roles:
            continue
        if positional:
            if i < len(file_names) and file_names[i] not in roles.values():
                roles[role] = file_names[i]
            continue
        for alias in COLUMN_ALIASES[role]:
            if alias in lower and lower[alias] not in roles.values():
                roles[role] = lower[alias]
                break
    if "label" not in roles and not positional:
        for alias in COLUMN_ALIASES["label"]:
            if alias in lower and lower[alias] not in roles.values():
                roles["label"] = lower[alias]
                break
    for role in ("user", "item"):
        if role not in roles:
            raise DataError(
                f"{path}: cannot tell which column holds the {role} ids; the columns are {file_names}; "
                f"name it: columns={{'{role}': <name or position>}} (command line: {role}=<name or position> "
                f"after --columns / --data.options.columns)"
            )
    return roles


def _read_delimited(
    path: Path, delim: str, has_header: bool, file_names: list[str], roles: dict[str, str], wanted: list[str],
    strict: bool,
    encoding: str,
) -> InteractionTable:  # fmt: skip
    read_opts = dict(column_names=None if has_header else file_names, encoding=encoding)
    invalid: list[int] = []

    def count_invalid(row: Any) -> str:
        invalid.append(1)
        return "skip"

    source, d = open_source(path, delim)
    types = {roles[r]: pa.float64() for r in ("rating", "label") if r in roles}
    try:
        with source:
            table = pacsv.read_csv(
                source,
                read_options=pacsv.ReadOptions(**read_opts),
                parse_options=pacsv.ParseOptions(delimiter=d, invalid_row_handler=count_invalid),
                convert_options=pacsv.ConvertOptions(include_columns=wanted, column_types=types),
            )
        clean = not invalid and fast_path_ok(table, roles)
    except pa.ArrowInvalid:
        clean = False  # a value that does not convert; the text re-read below finds and reports it
    if clean:
        if table.num_rows == 0:
            raise DataError(f"{path} has no data rows")
        return InteractionTable(normalise_types(table, roles), ReadReport(str(path), table.num_rows))
    return _read_text(path, delim, has_header, file_names, roles, wanted, strict, encoding)


def _read_text(
    path: Path, delim: str, has_header: bool, file_names: list[str], roles: dict[str, str], wanted: list[str],
    strict: bool,
    encoding: str,
) -> InteractionTable:  # fmt: skip
    """All-text read that finds every malformed row with its line number.

    First multi-threaded; pyarrow numbers the rows it cannot split only when reading on one thread,
    so if there are such rows the file is read once more single-threaded. Line numbers of the other
    rows are counted from those: exact unless a quoted field spans lines.
    """
    for use_threads in (True, False):
        problems: list[tuple[int, str]] = []

        def record(row: Any, problems: list[tuple[int, str]] = problems) -> str:
            problems.append((row.number, f"expected {row.expected_columns} columns, found {row.actual_columns}"))
            return "skip"

        source, d = open_source(path, delim)
        with source:
            table = pacsv.read_csv(
                source,
                read_options=pacsv.ReadOptions(
                    column_names=None if has_header else file_names, use_threads=use_threads, encoding=encoding
                ),
                parse_options=pacsv.ParseOptions(delimiter=d, invalid_row_handler=record, ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(
                    include_columns=wanted, column_types={c: pa.string() for c in wanted}, strings_can_be_null=False
                ),
            )
        if not problems:
            break
    # every physical line after the header is either a parsed row or an invalid one; rows take the rest
    first_line = 2 if has_header else 1
    total = table.num_rows + len(problems)
    is_row = np.ones(total, dtype=np.bool_)
    bad_lines = np.array([ln for ln, _ in problems], dtype=np.int64) - first_line
    is_row[bad_lines[(bad_lines >= 0) & (bad_lines < total)]] = False
    line_numbers = np.flatnonzero(is_row).astype(np.int64) + first_line
    bad, checks, blank = check_rows(table, roles)
    blank_lines = int(blank.sum())
    rows_read = table.num_rows - blank_lines + len(problems)
    report = build_report(str(path), rows_read, checks, line_numbers, sorted(problems), blank_lines, strict=strict)
    kept = table.filter(pa.array(~(bad | blank)))
    if report.rows_read == 0:
        raise DataError(f"{path} has no data rows")
    if kept.num_rows == 0:
        raise DataError(f"{path}: all {report.rows_read} rows are malformed ({report.summary()})")
    return InteractionTable(normalise_types(kept, roles), report)


def from_table(
    table: pa.Table,
    *,
    columns: dict[str, str | int] | None = None,
    features: list[str] | tuple[str, ...] = (),
    strict: bool = False,
    source: str = "<table>",
) -> InteractionTable:
    """Maps the columns of an in-memory Arrow table (or one read from Parquet) like `read_interactions`;
    rows with null or malformed role values are skipped and reported by 1-based row number."""
    if table.num_rows == 0:
        raise DataError(f"{source} has no rows")
    roles = _resolve_roles(table.column_names, dict(columns or {}), Path(source), True)
    missing = [c for c in features if c not in table.column_names]
    if missing:
        raise DataError(f"{source}: no column(s) {missing}; the columns are {table.column_names}")
    table = table.select(list(dict.fromkeys([*roles.values(), *features])))
    for role, name in roles.items():
        kind = table.column(name).type
        if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            raise DataError(f"{source}: the {role} column {name!r} holds {kind} values; it needs one scalar per "
                            "row (explode lists into one row per value first)")
    for role in ("user", "item"):
        col = table.column(roles[role])
        if pa.types.is_floating(col.type):
            given = pc.drop_null(col)
            exact = exact_integers(given)
            if not pc.all(exact).as_py():
                example = given.filter(pc.invert(exact))[0].as_py()
                raise DataError(f"{source}: {role} ids in column {roles[role]!r} are floats that are not exact "
                                f"integers (e.g. {example!r}); store ids as integers or strings")
    if fast_path_ok(table, roles):
        return InteractionTable(normalise_types(table, roles), ReadReport(source, table.num_rows))
    text = pa.table({name: pc.cast(table.column(name), pa.string()).fill_null("") for name in roles.values()})
    rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
    bad, checks, blank = check_rows(text, roles)
    checks.append(("empty row", blank))
    report = build_report(source, table.num_rows, checks, rows, [], 0, strict=strict, unit="row")
    keep = pa.array(~(bad | blank))
    kept = table.filter(keep)
    if kept.num_rows == 0:
        raise DataError(f"{source}: all {table.num_rows} rows are malformed")
    for name in roles.values():
        kept = kept.set_column(kept.column_names.index(name), name, text.column(name).filter(keep))
    return InteractionTable(normalise_types(kept, roles), report)


def _read_adjacency(path: Path, encoding: str, skip_header: bool = False) -> InteractionTable:
    """`user item item ...` per line, whitespace-separated; a line with only a user adds nothing;
    `skip_header` drops a first line of column names."""
    with _open(path) as f:
        lines = pacsv.read_csv(
            f,
            read_options=pacsv.ReadOptions(column_names=["line"], encoding=encoding, skip_rows=int(skip_header)),
            parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}, strings_can_be_null=False),
        ).column("line")
    if len(lines) == 0:
        raise DataError(f"{path} is empty")
    tokens = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(lines.combine_chunks()))
    users = pc.list_element(pc.list_slice(tokens, 0, 1), 0)
    rest = pc.list_slice(tokens, 1)
    items = pc.list_flatten(rest)
    parents = pc.list_parent_indices(rest)
    table = pa.table({"user": users.take(parents), "item": items})
    if table.num_rows == 0:
        raise DataError(f"{path}: no line lists any item")
    report = ReadReport(str(path), int(len(lines)))
    return InteractionTable(normalise_types(table, {"user": "user", "item": "item"}), report)


def _printable(message: str, limit: int = 300) -> str:
    """A parser's message with the file's bytes it quotes made safe for a terminal: control and
    undecodable characters escaped (a binary file would otherwise print raw bytes), cut to `limit`."""
    safe = "".join(c if c.isprintable() and c != "\ufffd" else ascii(c)[1:-1] for c in message)
    return safe if len(safe) <= limit else safe[:limit] + "..."

