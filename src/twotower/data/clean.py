"""Row validation and type normalisation of the role columns (user, item, rating, label, timestamp),
all with pyarrow.compute over whole columns.

The readers parse a file fast with inferred types; when that fails or leaves nulls, they re-read the
file with every column as text and hand it here, where each malformed row is found with a vectorised
check and mapped back to its line number for the report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twotower.data.types import DataError

ROLES = ("user", "item", "rating", "label", "timestamp")
NUMERIC_ROLES = ("rating", "label", "timestamp")
MAX_REPORTED_LINES = 10

_INT = r"^\s*[+-]?\d+\s*$"
_NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_DATETIME = r"^\s*\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*$"
_BOOL = r"^\s*(?i:true|false)\s*$"
_CLOCK = r"^([01]\d|2[0-3]):[0-5]\d(:([0-5]\d|60)(\.\d+)?)?$"
_EXACT_FLOAT_INT = 2**53  # float64 holds every integer below this exactly
_MAX_SECONDS = 9.2e18  # |Unix seconds| that fit int64


@dataclass(frozen=True)
class ReadReport:
    """What reading one source did.

    Attributes:
        source: file path (or "<table>").
        rows_read: data rows seen (header and blank lines excluded).
        rows_skipped: malformed rows dropped.
        skipped_lines: the first few (<= 10) line numbers of dropped rows, 1-based physical lines
            (row numbers for Parquet and in-memory tables).
        reasons: reason -> number of rows dropped for it (a row is counted under its first reason).
        blank_lines: empty lines (skipped, not counted as malformed).
    """

    source: str
    rows_read: int
    rows_skipped: int = 0
    skipped_lines: tuple[int, ...] = ()
    reasons: dict[str, int] = field(default_factory=dict)
    blank_lines: int = 0

    @property
    def rows_kept(self) -> int:
        return self.rows_read - self.rows_skipped

    def summary(self) -> str:
        """One line for logs and the CLI."""
        text = f"{self.source}: {self.rows_read} rows read"
        if self.rows_skipped:
            why = ", ".join(f"{k}: {v}" for k, v in self.reasons.items())
            lines = ", ".join(map(str, self.skipped_lines))
            text += f", {self.rows_skipped} malformed rows skipped ({why}; first at lines {lines})"
        return text


def exact_integers(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Which values of a float column are integers that float64 holds exactly (|x| < 2**53)."""
    return pc.and_(pc.equal(pc.floor(col), col), pc.less(pc.abs(col), float(_EXACT_FLOAT_INT)))


def fast_path_ok(table: pa.Table, roles: dict[str, str]) -> bool:
    """True when the typed columns need no row-level repair: acceptable types and no nulls."""
    for role, name in roles.items():
        col = table.column(name)
        if col.null_count:
            return False
        t = col.type
        if role in ("user", "item"):
            ok = pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
            if pa.types.is_floating(t):  # float ids (e.g. from pandas) are fine when integral and exact
                ok = bool(pc.all(exact_integers(col)).as_py())
        elif role == "timestamp":
            ok = pa.types.is_integer(t) or pa.types.is_timestamp(t)
            if pa.types.is_floating(t):  # seconds beyond int64 are a malformed row, found by the text path
                ok = bool(pc.all(pc.less(pc.abs(col), _MAX_SECONDS)).as_py())
        else:
            ok = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
        if not ok:
            return False
        text_id = role in ("user", "item") and not (pa.types.is_integer(t) or pa.types.is_floating(t))
        if text_id and pc.any(pc.equal(pc.utf8_trim_whitespace(col), "")).as_py():
            return False
    return True


def normalise_types(table: pa.Table, roles: dict[str, str]) -> pa.Table:
    """Renames role columns to their role and casts them: ids int64 or string (trimmed), rating and
    label float64, timestamp int64 (datetimes as Unix seconds). Other columns pass through."""
    out = {}
    renamed = {name: role for role, name in roles.items()}
    for name in table.column_names:
        col = table.column(name)
        role = renamed.get(name)
        if role is None:
            out[name] = col
            continue
        if role in ("user", "item"):
            out[role] = _id_column(col)
        elif role == "timestamp":
            out[role] = _timestamp_column(col)
        else:
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                # true/false (any case) are 1/0, also mixed with numbers (check_rows accepts both)
                col = pc.utf8_lower(pc.utf8_trim_whitespace(col))
                col = pc.if_else(pc.equal(col, "true"), "1", pc.if_else(pc.equal(col, "false"), "0", col))
            out[role] = col.cast(pa.float64())
    return pa.table(out)


def _id_column(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """int64 ids where every id is an integer in int64's range (as pyarrow's typed read gives them, so
    a file re-read as text after a bad row yields the same type), else exact strings."""
    if pa.types.is_floating(col.type):  # fast_path_ok checked them integral and exact
        return col.cast(pa.int64())
    if pa.types.is_integer(col.type):
        try:
            return col.cast(pa.int64())
        except pa.ArrowInvalid:  # uint64 ids beyond int64: strings keep them exactly
            return col.cast(pa.string())
    col = pc.utf8_trim_whitespace(col.cast(pa.string()))
    if len(col) and pc.all(pc.match_substring_regex(col, r"^[+-]?\d{1,19}$")).as_py():
        try:
            return col.cast(pa.int64())
        except pa.ArrowInvalid:  # 19 digits beyond int64
            return col
    return col


def _timestamp_column(col: pa.ChunkedArray) -> pa.ChunkedArray:
    t = col.type
    if pa.types.is_integer(t):
        return col.cast(pa.int64())
    if pa.types.is_floating(t):
        return pc.floor(col).cast(pa.int64())
    if pa.types.is_timestamp(t):
        return pc.divide(col.cast(pa.timestamp("ns")).cast(pa.int64()), 1_000_000_000)
    text = pc.utf8_trim_whitespace(col.cast(pa.string()))
    if pc.all(pc.match_substring_regex(text, _INT)).as_py():
        return text.cast(pa.int64())  # exact, also for nanosecond epochs beyond float precision
    numeric = pc.match_substring_regex(text, _NUMBER)
    if pc.all(numeric).as_py():
        return pc.floor(text.cast(pa.float64())).cast(pa.int64())
    # datetime rows via a naive timestamp cast; numeric rows (if mixed) via float
    as_dt = pc.if_else(numeric, pa.scalar(None, pa.string()), pc.replace_substring(text, "T", " "))
    seconds = pc.divide(as_dt.cast(pa.timestamp("ns")).cast(pa.int64()), 1_000_000_000)
    as_num = pc.if_else(numeric, text, pa.scalar(None, pa.string())).cast(pa.float64())
    return pc.coalesce(seconds, pc.floor(as_num).cast(pa.int64()))


def _bad_timestamps(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text timestamps that are neither numbers within int64 seconds nor real calendar datetimes
    (2020-13-45 has the shape of a date but is none)."""
    text = pc.utf8_trim_whitespace(col)
    numeric = pc.match_substring_regex(text, _NUMBER)
    shaped = pc.match_substring_regex(text, _DATETIME)
    value = pc.if_else(numeric, text, pa.scalar(None, pa.string())).cast(pa.float64())
    number_ok = pc.and_(numeric, pc.less(pc.abs(value), _MAX_SECONDS))
    clock = pc.utf8_slice_codeunits(text, 11)
    day = pc.if_else(shaped, pc.utf8_slice_codeunits(text, 0, 10), "1970-01-01")
    parsed = pc.strptime(day, "%Y-%m-%d", "s", error_is_null=True)
    # strptime rolls 2021-02-30 over to March: a real date prints back as itself
    real_day = pc.equal(pc.strftime(parsed, "%Y-%m-%d"), day)
    time_ok = pc.or_(pc.equal(clock, ""), pc.match_substring_regex(clock, _CLOCK))
    date_ok = pc.and_(pc.and_(shaped, pc.fill_null(real_day, False)), time_ok)
    return pc.invert(pc.or_(pc.fill_null(number_ok, False), pc.fill_null(date_ok, False)))


def check_rows(table: pa.Table, roles: dict[str, str]) -> tuple[np.ndarray, list[tuple[str, np.ndarray]], np.ndarray]:
    """Finds malformed rows in an all-text table.

    Args:
        table: every role column as string, one row per parsed line.
        roles: role -> column name.

    Returns:
        (bad bool [rows], [(reason, bool [rows])...] in check order, blank bool [rows]).
    """
    n = table.num_rows
    blank = np.ones(n, dtype=np.bool_)
    for name in roles.values():
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table.column(name))), 0)
        blank &= empty.to_numpy(zero_copy_only=False)
    checks: list[tuple[str, np.ndarray]] = []
    for role in ROLES:
        if role not in roles:
            continue
        col = table.column(roles[role])
        if role in ("user", "item"):
            bad = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
            reason = f"empty {role} id"
        elif role == "timestamp":
            bad = _bad_timestamps(col)
            reason = "invalid timestamp"
        else:
            ok = pc.match_substring_regex(col, _NUMBER)
            if role == "label":
                ok = pc.or_(ok, pc.match_substring_regex(col, _BOOL))
            bad = pc.invert(ok)
            reason = f"non-numeric {role}"
        checks.append((reason, bad.to_numpy(zero_copy_only=False) & ~blank))
    bad_any = np.zeros(n, dtype=np.bool_)
    for _, mask in checks:
        bad_any |= mask
    return bad_any, checks, blank


def build_report(
    source: str,
    rows_read: int,
    row_problems: list[tuple[str, np.ndarray]],
    line_numbers: np.ndarray,
    parse_problems: list[tuple[int, str]],
    blank_lines: int,
    *,
    strict: bool,
    unit: str = "line",
) -> ReadReport:
    """Counts problems per reason; in strict mode raises on the first one (lowest line) instead."""
    reasons: dict[str, int] = {}
    lines: list[np.ndarray] = []
    first: tuple[int, str] | None = None
    taken = np.zeros(len(line_numbers), dtype=np.bool_)
    if parse_problems:
        reasons["wrong column count"] = len(parse_problems)
        lines.append(np.array([ln for ln, _ in parse_problems], dtype=np.int64))
        first = min(parse_problems)
    for reason, mask in row_problems:
        mask = mask & ~taken
        taken |= mask
        if mask.any():
            reasons[reason] = int(mask.sum())
            hit = line_numbers[mask]
            lines.append(hit)
            if first is None or hit[0] < first[0]:
                first = (int(hit[0]), reason)
    if strict and first is not None:
        raise DataError(f"{source}:{first[0]}: malformed {unit} ({first[1]}); turn strict mode off "
                        "(--no-data.options.strict; in Python, strict=False) to skip and count such rows")
    all_lines = np.sort(np.concatenate(lines)) if lines else np.zeros(0, dtype=np.int64)
    skipped = int(sum(reasons.values()))
    return ReadReport(
        source=source,
        rows_read=rows_read,
        rows_skipped=skipped,
        skipped_lines=tuple(int(x) for x in all_lines[:MAX_REPORTED_LINES]),
        reasons=reasons,
        blank_lines=blank_lines,
    )
