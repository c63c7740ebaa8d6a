"""External id <-> contiguous int32 code, built with hashing (pyarrow) or a lookup table, never a
Python dict over rows. Codes follow the sorted order of the ids, so the same set of ids always gets
the same codes whatever the row order of the file. No code is reserved: 0..size-1 are all real ids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twotower.atomic import atomic_write

_MAGIC = b"twotower.vocabulary"


def _to_arrow(values: object) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return pa.array(arr.astype(np.int64, copy=False))
    if arr.dtype.kind in "OUS":
        return pa.array(arr.astype(object) if arr.dtype.kind != "O" else arr, type=pa.string())
    raise TypeError(f"ids must be integers or strings, got dtype {arr.dtype}")


def _normalise(arr: pa.Array) -> pa.Array:
    """Integer ids -> int64, text ids -> string; anything else is refused."""
    if pa.types.is_integer(arr.type):
        return arr.cast(pa.int64())
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_dictionary(arr.type):
        return arr.cast(pa.string())
    raise TypeError(f"ids must be integers or strings, got arrow type {arr.type}")


class Vocabulary:
    """Maps external ids (int64 or str) to contiguous int32 codes and back.

    Attributes:
        ids: [size] external ids, `ids[code]` is the id of `code` (int64, or object array of str).

    Example:
        >>> codes, vocab = encode_ids(["b", "a", "b"])
        >>> codes.tolist(), vocab.decode(codes).tolist()
        ([1, 0, 1], ['b', 'a', 'b'])
    """

    def __init__(self, ids: object) -> None:
        arrow = _normalise(_to_arrow(ids))
        if arrow.null_count:
            raise ValueError("a vocabulary cannot contain null ids")
        if len(pc.unique(arrow)) != len(arrow):
            raise ValueError("vocabulary ids must be unique")
        self._arrow = arrow
        self.ids: np.ndarray = arrow.to_numpy(zero_copy_only=False)
        if self.ids.dtype.kind != "O" and pa.types.is_string(arrow.type):
            self.ids = self.ids.astype(object)

    @property
    def size(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def is_integer(self) -> bool:
        return pa.types.is_integer(self._arrow.type)

    def __repr__(self) -> str:
        kind = "int" if self.is_integer else "str"
        head = ", ".join(repr(x) for x in self.ids[:3])
        return f"Vocabulary(size={self.size}, {kind} ids [{head}{', ...' if self.size > 3 else ''}])"

    def encode(self, external: object) -> np.ndarray:
        """int32 [n] codes of the ids `external` [n]; -1 for ids not in the vocabulary (or null).

        Integer ids given as text ("42") match integer vocabularies and vice versa.
        """
        arr = _to_arrow(external)
        if pa.types.is_null(arr.type):
            return np.full(len(arr), -1, dtype=np.int32)
        arr = _normalise(arr)
        if arr.type != self._arrow.type:
            arr = _coerce(arr, self._arrow.type)
        found = pc.index_in(arr, value_set=self._arrow)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)

    def decode(self, codes: object) -> np.ndarray:
        """External ids [...] of int codes [...] (any shape); a code outside [0, size) is an error."""
        codes = np.asarray(codes)
        if codes.dtype.kind not in "iu":
            raise TypeError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.size):
            raise ValueError(f"codes must lie in [0, {self.size}), got [{codes.min()}, {codes.max()}]")
        return self.ids[codes]

    def subset(self, codes: np.ndarray) -> Vocabulary:
        """The vocabulary of the ids `codes` [m] (ascending), renumbered 0..m-1."""
        out = Vocabulary.__new__(Vocabulary)
        out._arrow = self._arrow.take(pa.array(np.asarray(codes, dtype=np.int64)))
        out.ids = self.ids[codes]
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Writes the ids to a parquet file (column `id`), atomically (temp file + rename)."""
        path = Path(path)
        table = pa.table({"id": self._arrow}).replace_schema_metadata({_MAGIC: b"1"})
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Reads a vocabulary written by `save`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        table = pq.read_table(path)
        if "id" not in table.column_names or _MAGIC not in (table.schema.metadata or {}):
            raise ValueError(f"{path} is not a twotower vocabulary (no 'id' column / marker)")
        return cls(table.column("id"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._arrow.equals(other._arrow)

    __hash__ = None  # type: ignore[assignment]


def _coerce(arr: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_string(target):
        return arr.cast(pa.string())
    # text -> int64: ids that are not integers cannot be in an integer vocabulary; they become null
    ok = pc.match_substring_regex(arr, r"^\s*[+-]?\d{1,18}\s*$").fill_null(False)
    cleaned = pc.if_else(ok, pc.utf8_trim_whitespace(arr), pa.scalar(None, pa.string()))
    return cleaned.cast(pa.int64())


def encode_ids(values: object) -> tuple[np.ndarray, Vocabulary]:
    """Encodes ids [n] (int or str; numpy, list or arrow) as int32 codes [n] with a new vocabulary.

    Codes follow the ascending order of the ids. Integer ids with a compact range go through a
    lookup table (O(n + range)); others through pyarrow's hash dictionary encoding, whose (small)
    dictionary is then sorted.
    """
    if isinstance(values, pa.ChunkedArray) and pa.types.is_integer(values.type) and not values.null_count:
        compact = _encode_compact_ints([c.cast(pa.int64()).to_numpy() for c in values.chunks], len(values))
        if compact is not None:  # straight from the chunks, no concatenated copy
            return compact
    arr = _normalise(_to_arrow(values))
    if arr.null_count:
        raise ValueError("ids contain nulls; drop or repair those rows before encoding")
    if len(arr) == 0:
        return np.zeros(0, dtype=np.int32), Vocabulary(pa.array([], type=arr.type))
    if pa.types.is_integer(arr.type):
        compact = _encode_compact_ints([arr.to_numpy()], len(arr))
        if compact is not None:
            return compact
    encoded = pc.dictionary_encode(arr)
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    codes = rank[encoded.indices.to_numpy()]
    vocab = Vocabulary.__new__(Vocabulary)
    vocab._arrow = encoded.dictionary.take(pa.array(order))
    vocab.ids = vocab._arrow.to_numpy(zero_copy_only=False)
    if vocab.ids.dtype.kind != "O" and not pa.types.is_integer(arr.type):
        vocab.ids = vocab.ids.astype(object)
    return codes, vocab


def _encode_compact_ints(chunks: list[np.ndarray], n: int) -> tuple[np.ndarray, Vocabulary] | None:
    """Lookup-table encoding of int64 ids given in pieces [n_k]; None when their range is too wide
    (more than 2n + 2**20 values) for a table to pay off."""
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        return None
    lo = min(int(c.min()) for c in chunks)
    hi = max(int(c.max()) for c in chunks)
    if hi - lo > 2 * n + (1 << 20):
        return None
    present = np.zeros(hi - lo + 1, dtype=np.bool_)
    for c in chunks:
        present[c - lo] = True
    rank = np.cumsum(present, dtype=np.int32) - 1
    codes = np.empty(n, dtype=np.int32)
    start = 0
    for c in chunks:
        codes[start : start + len(c)] = rank[c - lo]
        start += len(c)
    vocab = Vocabulary.__new__(Vocabulary)
    vocab.ids = np.flatnonzero(present).astype(np.int64) + lo
    vocab._arrow = pa.array(vocab.ids)
    return codes, vocab
