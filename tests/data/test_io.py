"""Readers: every format on small generated files, column mapping, malformed rows and errors."""

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower.data import DataError, detect_format, from_table, read_interactions
from twotower.data.io import _SeparatorStream

ROWS = [(1, 10, 4.0, 100), (1, 11, 3.5, 101), (2, 10, 5.0, 102), (3, 12, 1.0, 103)]


def _cols(result):
    t = result.table
    return {name: t.column(name).to_pylist() for name in t.column_names}


def _expected():
    return {
        "user": [r[0] for r in ROWS],
        "item": [r[1] for r in ROWS],
        "rating": [r[2] for r in ROWS],
        "timestamp": [r[3] for r in ROWS],
    }


def _write(path, header, sep, newline="\n"):
    lines = ([sep.join(header)] if header else []) + [sep.join(str(x) for x in r) for r in ROWS]
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


def test_csv_with_header_guesses_columns(tmp_path):
    path = _write(tmp_path / "x.csv", ["user_id", "item_id", "rating", "timestamp"], ",")
    result = read_interactions(path)
    assert _cols(result) == _expected()
    assert result.table.schema.field("user").type == pa.int64()
    assert result.report.rows_read == 4 and result.report.rows_skipped == 0


def test_tsv_with_given_names_and_explicit_columns(tmp_path):
    path = _write(tmp_path / "x.tsv", None, "\t")
    result = read_interactions(
        path, names=["a", "b", "c", "d"], columns={"user": "a", "item": "b", "rating": "c", "timestamp": "d"}
    )
    assert _cols(result) == _expected()


def test_positional_columns_for_headerless_file(tmp_path):
    path = _write(tmp_path / "x.txt", None, ",")
    result = read_interactions(path, format="csv", header=False, columns={"user": 1, "item": 0})
    cols = _cols(result)
    assert cols["user"] == [r[1] for r in ROWS] and cols["item"] == [r[0] for r in ROWS]


def test_movielens_100k_udata(tmp_path):
    path = _write(tmp_path / "u.data", None, "\t")
    assert detect_format(path) == "ml-100k"
    assert _cols(read_interactions(path)) == _expected()


def test_movielens_1m_double_colon(tmp_path):
    path = _write(tmp_path / "ratings.dat", None, "::")
    assert detect_format(path) == "ml-1m"
    assert _cols(read_interactions(path)) == _expected()


def test_double_colon_split_across_chunk_boundary():
    # ':' ':' falling on both sides of a 1 MiB read must still become one separator
    body = b"x" * ((1 << 20) - 1) + b"::y::z\n"
    raw = pa.BufferReader(body)
    out = _SeparatorStream(raw, b"::", b"\t").readall()
    assert out == b"x" * ((1 << 20) - 1) + b"\ty\tz\n"


def test_many_rows_double_colon_matches_tab(tmp_path):
    rng = np.random.default_rng(0)
    u, i, t = rng.integers(0, 10**6, 200_000), rng.integers(0, 10**5, 200_000), rng.integers(0, 10**9, 200_000)
    lines = "\n".join(f"{a}::{b}::{c % 5 + 1}::{c}" for a, b, c in zip(u, i, t, strict=True)) + "\n"
    (tmp_path / "ratings.dat").write_text(lines)  # > 4 MiB: several chunks of the separator stream
    result = read_interactions(tmp_path / "ratings.dat")
    assert result.table.column("user").to_numpy().tolist() == u.tolist()
    assert result.table.column("timestamp").to_numpy().tolist() == t.tolist()


def test_ml_latest_crlf(tmp_path):
    path = _write(tmp_path / "ratings.csv", ["userId", "movieId", "rating", "timestamp"], ",", newline="\r\n")
    result = read_interactions(path, format="ml-latest")
    assert _cols(result) == _expected()


def test_parquet(tmp_path):
    table = pa.table({"uid": ["a", "b", "a"], "iid": [5, 6, 7], "ts": [1, 2, 3]})
    pq.write_table(table, tmp_path / "x.parquet")
    result = read_interactions(tmp_path / "x.parquet", columns={"user": "uid", "item": "iid", "timestamp": "ts"})
    assert _cols(result) == {"user": ["a", "b", "a"], "item": [5, 6, 7], "timestamp": [1, 2, 3]}


def test_gzip_csv(tmp_path):
    raw = _write(tmp_path / "x.csv", ["user", "item", "rating", "timestamp"], ",").read_bytes()
    (tmp_path / "y.csv.gz").write_bytes(gzip.compress(raw))
    assert _cols(read_interactions(tmp_path / "y.csv.gz")) == _expected()


def test_adjacency_list(tmp_path):
    (tmp_path / "train.txt").write_text("0 5 6 7\n1 5\n\n2\n3  8   9 \n")
    result = read_interactions(tmp_path / "train.txt", format="adjacency")
    assert _cols(result) == {"user": [0, 0, 0, 1, 3, 3], "item": [5, 6, 7, 5, 8, 9]}


def test_space_separated_table_is_not_an_adjacency_list(tmp_path):
    path = _write(tmp_path / "x.txt", None, " ")
    assert detect_format(path) == "space"
    assert _cols(read_interactions(path)) == _expected()
    (tmp_path / "adj.txt").write_text("1 2 3 4\n2 5 6 7\n3 8\n")
    assert detect_format(tmp_path / "adj.txt") == "adjacency"


def test_string_ids_and_feature_columns(tmp_path):
    (tmp_path / "x.csv").write_text("user,item,genre\nalice,i1,rock\nbob,i2,jazz\n")
    result = read_interactions(tmp_path / "x.csv", features=["genre"])
    assert _cols(result) == {"user": ["alice", "bob"], "item": ["i1", "i2"], "genre": ["rock", "jazz"]}


def test_iso_datetime_timestamps(tmp_path):
    (tmp_path / "x.csv").write_text("user,item,time\n1,2,2020-01-01 00:00:10\n1,3,2020-01-02T00:00:00\n")
    result = read_interactions(tmp_path / "x.csv")
    assert result.table.column("timestamp").to_pylist() == [1577836810, 1577923200]


MALFORMED = (
    "user,item,rating,timestamp\n"  # line 1
    "1,10,4.0,100\n"  # 2 ok
    "1,11\n"  # 3 wrong column count
    "2,12,abc,101\n"  # 4 non-numeric rating
    "\n"  # 5 blank: skipped silently
    ",13,3.0,102\n"  # 6 empty user id
    "3,14,2.0,1x3\n"  # 7 invalid timestamp
    "4,15,5.0,104,9\n"  # 8 wrong column count
    "5,16,1.0,105\n"  # 9 ok
)


def test_malformed_rows_skipped_with_line_numbers(tmp_path):
    (tmp_path / "bad.csv").write_text(MALFORMED)
    result = read_interactions(tmp_path / "bad.csv")
    assert _cols(result) == {"user": [1, 5], "item": [10, 16], "rating": [4.0, 1.0], "timestamp": [100, 105]}
    rep = result.report
    assert rep.rows_skipped == 5 and rep.rows_read == 7 and rep.blank_lines == 1
    assert rep.skipped_lines == (3, 4, 6, 7, 8)
    assert rep.reasons == {"wrong column count": 2, "non-numeric rating": 1, "empty user id": 1, "invalid timestamp": 1}
    assert "first at lines 3, 4, 6, 7, 8" in rep.summary()


def test_malformed_late_in_large_file_is_found(tmp_path):
    # the bad value sits far beyond pyarrow's first block, so type inference has already succeeded
    lines = ["user,item,rating"] + [f"{k},{k % 97},3" for k in range(300_000)]
    lines[250_001] = "7,7,oops"
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n")
    result = read_interactions(tmp_path / "big.csv")
    assert result.report.skipped_lines == (250_002,)
    assert result.num_rows == 299_999


def test_strict_raises_on_first_with_file_and_line(tmp_path):
    (tmp_path / "bad.csv").write_text(MALFORMED)
    with pytest.raises(DataError, match=r"bad\.csv:3: malformed line \(expected 4 columns, found 2\); turn strict "
                                        r"mode off \(--no-data.options.strict; in Python, strict=False\)"):
        read_interactions(tmp_path / "bad.csv", strict=True)
    (tmp_path / "bad2.csv").write_text("user,item,rating\n1,2,3\n1,2,x\n")
    with pytest.raises(DataError, match=r"bad2\.csv:3: .*non-numeric rating"):
        read_interactions(tmp_path / "bad2.csv", strict=True)


def test_table_with_nulls_reports_rows(tmp_path):
    table = pa.table({"user": [1, None, 3, 4], "item": [1, 2, None, 4], "rating": [1.0, 2.0, 3.0, None]})
    result = from_table(table)
    assert result.table.column("user").to_pylist() == [1]
    assert result.report.skipped_lines == (2, 3, 4)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_interactions(tmp_path / "nope.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_interactions(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("user,item\n")
    with pytest.raises(DataError, match="no data rows"):
        read_interactions(tmp_path / "h.csv")
    (tmp_path / "c.csv").write_text("uid,iid\n1,2\n")
    with pytest.raises(DataError, match=r"no column named 'movie'.*\['uid', 'iid'\]"):
        read_interactions(tmp_path / "c.csv", columns={"user": "uid", "item": "movie"})
    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"which column holds the user ids.*\['a', 'b'\]"):
        read_interactions(tmp_path / "d.csv")
    (tmp_path / "f.csv").write_text("user,item\n1,\n")
    with pytest.raises(DataError, match="all 1 rows are malformed"):
        read_interactions(tmp_path / "f.csv")
    with pytest.raises(ValueError, match="unknown format"):
        read_interactions(tmp_path / "c.csv", format="xml")
    with pytest.raises(ValueError, match="unknown column role"):
        read_interactions(tmp_path / "c.csv", columns={"user": "uid", "item": "iid", "price": "x"})


def test_encoding_and_unparseable_text(tmp_path):
    (tmp_path / "l1.csv").write_bytes("user,item\nJos\xe9,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"l1\.csv: cannot read.*encoding="):
        read_interactions(tmp_path / "l1.csv")
    result = read_interactions(tmp_path / "l1.csv", encoding="latin-1")
    assert _cols(result) == {"user": ["José"], "item": ["café"]}
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_interactions(tmp_path / "empty.txt", format="adjacency")


_CORRUPT = {
    "short": lambda u, i, r, t: f"{u},{i}",
    "long": lambda u, i, r, t: f"{u},{i},{r},{t},7",
    "rating": lambda u, i, r, t: f"{u},{i},x{r},{t}",
    "time": lambda u, i, r, t: f"{u},{i},{r},{t}y",
    "user": lambda u, i, r, t: f" ,{i},{r},{t}",
}


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 50), st.integers(-5, 10**12), st.integers(0, 10), st.integers(0, 2**40)),
                  min_size=1, max_size=30),
    marks=st.lists(st.sampled_from([None, None, None, "blank", *_CORRUPT]), min_size=30, max_size=30),
    crlf=st.booleans(),
)
def test_line_numbers_property(tmp_path_factory, rows, marks, crlf):
    # every corrupted line is reported by its physical number; blank lines shift numbers but are not errors
    lines, kept, bad_lines = ["user,item,rating,timestamp"], [], []
    for (u, i, r, t), mark in zip(rows, marks, strict=False):  # marks has 30 entries, rows 1 to 30: the first len(rows)
        if mark == "blank":
            lines.append("")
        if mark in _CORRUPT:
            lines.append(_CORRUPT[mark](u, i, r / 2, t))
            bad_lines.append(len(lines))
        else:
            lines.append(f"{u},{i},{r / 2},{t}")
            kept.append((u, i, r / 2, t))
    if not kept:
        return
    path = tmp_path_factory.mktemp("p") / "r.csv"
    path.write_bytes((("\r\n" if crlf else "\n").join(lines) + "\n").encode())
    result = read_interactions(path)
    t = result.table
    assert list(zip(*(t.column(c).to_pylist() for c in ("user", "item", "rating", "timestamp")), strict=True)) == kept
    assert result.report.rows_skipped == len(bad_lines)
    assert result.report.skipped_lines == tuple(bad_lines[:10])


def test_large_integer_timestamps_stay_exact_on_the_text_path(tmp_path):
    # a bad row forces the all-text re-read; 19-digit nanosecond epochs must not pass through float64
    (tmp_path / "ns.csv").write_text(
        "user,item,ts\n1,2,1600000000123456789\n1,,1600000000123456790\n2,3,1600000000123456791\n"
    )
    result = read_interactions(tmp_path / "ns.csv")
    assert result.table.column("timestamp").to_pylist() == [1600000000123456789, 1600000000123456791]


@pytest.mark.parametrize("sep,name", [(",", "x.csv"), ("\t", "x.tsv"), (" ", "x.txt")])
def test_a_headerless_file_keeps_its_first_row(tmp_path, sep, name):
    """`header` left unset is detected: a first line of numbers is data, not column names."""
    path = _write(tmp_path / name, None, sep)
    result = read_interactions(path, columns={"user": 0, "item": 1})
    assert result.num_rows == len(ROWS)
    assert _cols(result)["user"] == [r[0] for r in ROWS]


@pytest.mark.parametrize("sep,name", [(" ", "x.txt"), ("\t", "x.tsv")])
def test_a_header_over_numbers_is_detected_in_whitespace_files(tmp_path, sep, name):
    path = _write(tmp_path / name, ["user", "item", "rating", "timestamp"], sep)
    assert _cols(read_interactions(path)) == _expected()
    two = tmp_path / "pairs.txt"  # two fields per line reads as an adjacency list: its header is dropped too
    two.write_text("user item\n1 2\n1 3\n2 3\n")
    result = read_interactions(two)
    assert result.num_rows == 3 and _cols(result)["user"] == [1, 1, 2]


def test_header_detection_rules():
    from twotower.data.io import detect_header

    assert detect_header(["1,2,3", "4,5,6"], ",") is False
    assert detect_header(["userId,movieId", "1,2"], ",") is True
    assert detect_header(["u1,i1", "u2,i2"], ",") is None  # string ids on every line: cannot tell
    assert detect_header(["u1,i1,5", "u2,i2,4"], ",") is False  # a number in line 1: data, not names
    assert detect_header(["user,item", "u2,i2"], ",") is True  # known column names
    assert detect_header(["a::b", "1::2"], "::") is True


def test_values_the_row_check_accepts_are_read_not_fatal(tmp_path):
    """Mixed 1/0/true labels, impossible dates, seconds beyond int64 and ids beyond int64: each is
    either read or a skipped row with its line, never a failure of the whole file."""
    labels = tmp_path / "labels.csv"
    labels.write_text("user,item,click\n1,2,1\n1,3,0\n2,3,true\n2,4,False\n")
    assert _cols(read_interactions(labels))["label"] == [1.0, 0.0, 1.0, 0.0]
    dates = tmp_path / "dates.csv"
    dates.write_text("user,item,timestamp\n1,2,2020-01-01\n1,3,2020-01-02 10:00\n2,3,2020-13-45\n2,4,2021-02-30\n"
                     "3,4,2020-01-01 25:00\n3,5,1e30\n")
    result = read_interactions(dates)
    assert result.num_rows == 2 and result.report.reasons == {"invalid timestamp": 4}
    assert list(result.report.skipped_lines[:4]) == [4, 5, 6, 7]
    huge = tmp_path / "huge.csv"
    huge.write_text("user,item\n18000000000000000000,1\n18000000000000000001,2\n")
    assert _cols(read_interactions(huge))["user"] == ["18000000000000000000", "18000000000000000001"]


def test_id_type_does_not_depend_on_unrelated_rows(tmp_path):
    """19-digit ids in int64's range are int64 whether or not another row is malformed (a text re-read)."""
    clean = tmp_path / "clean.csv"
    clean.write_text("user,item,rating\n9000000000000000000,1,2\n9000000000000000001,2,3\n")
    dirty = tmp_path / "dirty.csv"
    dirty.write_text(clean.read_text() + "9000000000000000002,3,x\n")
    for path in (clean, dirty):
        result = read_interactions(path)
        assert result.table.schema.field("user").type == pa.int64()
        assert _cols(result)["user"][:2] == [9000000000000000000, 9000000000000000001]


def test_float_ids_that_are_not_exact_integers_are_refused():
    """Float id columns (pandas, Parquet) must hold exact integers: 2.5 silently became the string
    '2.5' (and every other id a string with it)."""
    with pytest.raises(
        DataError, match=r"item ids in column 'item' are floats that are not exact integers \(e.g. 2.5\)"
    ):
        from_table(pa.table({"user": [1, 2, 3], "item": [1.0, 2.5, 3.0]}))
    with pytest.raises(DataError, match="not exact integers"):
        from_table(pa.table({"user": [2.0**60, 1.0], "item": [1, 2]}))
    assert _cols(from_table(pa.table({"user": [1, 2], "item": [1.0, 3.0]})))["item"] == [1, 3]


def test_a_list_valued_id_column_is_named():
    with pytest.raises(DataError, match="the item column 'item' holds list"):
        from_table(pa.table({"user": [1, 2], "item": [[1, 2], [3]]}))


def test_a_binary_file_gets_an_error_without_raw_bytes(tmp_path):
    # Bytes that the CSV parser reads far enough to quote in its error (seed 0 does; other seeds fail
    # earlier on UTF-8): the quoted bytes come escaped, so printing the error cannot drive a terminal.
    (tmp_path / "blob.dat").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(DataError, match="blob.dat: cannot read as 'adjacency': CSV parse error") as caught:
        read_interactions(tmp_path / "blob.dat")
    assert str(caught.value).isprintable() and len(str(caught.value)) < 500
