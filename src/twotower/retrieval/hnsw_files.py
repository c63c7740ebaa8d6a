"""The files of a saved HNSW index: `index.hnsw` (hnswlib's own format) and `index.json` (the settings
hnswlib does not store -- `ef` among them -- the sha256 of `index.hnsw`, the catalogue size and the
item-vocabulary fingerprint).

Everything here is about trusting the files before hnswlib reads them: `read_description` checks the
description's keys and types, the checksum, the catalogue size and the vocabulary; `graph_header`
reads the sizes hnswlib's binary header records; `check_deleted` checks the deleted set against the
loaded graph. A file that fails a check is named, with what to do (rebuild the index). `write_files`
renames the two files into place together under `files_lock`, which readers share while they load:
a reader during `twotower index build` gets the old pair or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

from twotower.atomic import _umask, file_sha256, named_error, read_json_object
from twotower.retrieval.scoring import SCORINGS

try:
    import fcntl
except ImportError:  # Windows: no lock (see files_lock)
    fcntl = None  # type: ignore[assignment]

INDEX_FILE = "index.hnsw"
META_FILE = "index.json"
LOCK_FILE = ".index.lock"
FORMAT = "twotower.hnsw/1"

# index.json keys and their types (bool is not an int here).
_META_TYPES: dict[str, tuple[type, ...]] = {
    "space": (str,), "dim": (int,), "M": (int,), "ef_construction": (int,), "ef": (int,),
    "rebuild_threshold": (float, int, type(None)), "max_fetch": (int,), "max_elements": (int,), "count": (int,),
    "deleted": (list,), "sha256": (str,), "num_items": (int, type(None)), "item_vocabulary": (str, type(None)),
}


def vocabulary_fingerprint(ids: Any) -> str:
    """sha256 of a vocabulary's external ids in code order (ints or strings), to tie files together."""
    ids = np.asarray(ids)
    digest = hashlib.sha256()
    if ids.dtype.kind in "iu":
        digest.update(b"int:")
        digest.update(ids.astype("<i8").tobytes())
    else:
        digest.update(b"str:")
        for value in ids.tolist():
            digest.update(str(value).encode("utf-8") + b"\x00")
    return digest.hexdigest()


@contextmanager
def files_lock(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """The index files' readers-writer lock across threads and processes (`flock` on `.index.lock`):
    `write_files` replaces index.hnsw and then index.json, and holds it alone for those two renames;
    a reader holds it shared while it reads both, so it gets one build's pair, old or new, never
    one build's graph with another's description. Where the lock file cannot be made (a read-only
    model directory, which no build can change either) or there is no `flock` (Windows), nothing
    is locked."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        if exclusive:
            raise
        try:  # another account's model directory: its lock file can still be read, and locked shared
            fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
        except OSError:
            yield
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_files(directory: Path, save: Callable[[str], None], meta: dict[str, Any], item_ids: Any | None) -> None:
    """Writes `index.hnsw` through `save(path)` (hnswlib's `save_index`) and `index.json` (`meta`,
    the format tag, the graph's sha256, the vocabulary fingerprint): both complete under temporary
    names first, then renamed into place together under `files_lock`."""
    staged: dict[str, Path] = {}

    def stage(name: str, write: Callable[[Path], None]) -> None:  # completes `name` under a temporary name
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            os.close(fd)
            staged[name] = Path(tmp)
            write(Path(tmp))
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError as err:
            raise named_error(err, directory / name, staged.get(name)) from err

    fingerprint = None if item_ids is None else vocabulary_fingerprint(item_ids)
    try:
        stage(INDEX_FILE, lambda tmp: save(str(tmp)))
        description = {"format": FORMAT, **meta, "sha256": file_sha256(staged[INDEX_FILE]),
                       "item_vocabulary": fingerprint}
        stage(META_FILE, lambda tmp: tmp.write_text(json.dumps(description, indent=2, sort_keys=True, default=str),
                                                    encoding="utf-8"))
        with files_lock(directory, exclusive=True):
            for name in (INDEX_FILE, META_FILE):
                try:
                    os.replace(staged.pop(name), directory / name)
                except OSError as err:
                    raise named_error(err, directory / name) from err
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def read_description(directory: Path, *, num_items: int | None, item_ids: Any | None) -> dict[str, Any]:
    """The checked contents of `index.json` in `directory`, whose `index.hnsw` matches its checksum.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: checksum, catalogue size, vocabulary or format mismatch.
    """
    index_path, meta_path = directory / INDEX_FILE, directory / META_FILE
    for path in (index_path, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build the index first (twotower index build)")
    meta = read_json_object(meta_path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a twotower HNSW index description (format {FORMAT})")
    _check_meta(meta, meta_path)
    actual = file_sha256(index_path)
    if actual != meta["sha256"]:
        raise ValueError(
            f"{index_path} does not match its checksum in {meta_path} "
            f"(sha256 {actual[:12]}... vs {meta['sha256'][:12]}...): rebuild the index"
        )
    if num_items is not None and meta["num_items"] is not None and int(num_items) != meta["num_items"]:
        raise ValueError(
            f"index in {directory} was built for {meta['num_items']} items; "
            f"the model has {num_items}: rebuild the index"
        )
    if (
        item_ids is not None
        and meta["item_vocabulary"] is not None
        and vocabulary_fingerprint(item_ids) != meta["item_vocabulary"]
    ):
        raise ValueError(f"index in {directory} was built for a different item vocabulary: rebuild the index")
    return meta


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """Every key `load` reads is there with its type; a hand-edited or truncated file is named."""
    for key, types in _META_TYPES.items():
        if key not in meta:
            raise ValueError(f"{path} lacks {key!r}: not a complete index description (rebuild the index)")
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{path}: {key!r} has the wrong type ({type(value).__name__}): rebuild the index")
    if "scoring" in meta and meta["scoring"] not in SCORINGS:
        raise ValueError(f"{path}: unknown scoring {meta['scoring']!r}")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in meta["deleted"]):
        raise ValueError(f"{path}: 'deleted' must list non-negative item codes")


def graph_header(path: Path) -> dict[str, int]:
    """The sizes hnswlib's file header records (its `saveIndex` layout), read before hnswlib trusts them:
    a description whose dim disagrees with the graph would make every search read past each vector."""
    layout = "<6Qi I3Qd Q"
    size = struct.calcsize(layout)
    with open(path, "rb") as f:
        raw = f.read(size)
    if len(raw) < size:
        raise ValueError(f"{path} is too short to be an hnswlib index ({len(raw)} bytes): rebuild the index")
    (_, max_elements, count, _, label_offset, data_offset, _, _, _, _, m, _, _) = struct.unpack(layout, raw)
    return {"max_elements": max_elements, "count": count, "data_bytes": label_offset - data_offset, "M": m}


def check_deleted(graph: hnswlib.Index, labels: set[int], deleted: set[int], directory: Path) -> None:
    """The deleted set of index.json must be the graph's own: every listed label is in the graph and
    marked deleted there, and every other label is live (hnswlib answers `get_items` for live labels only)."""
    index_path, meta_path = directory / INDEX_FILE, directory / META_FILE
    unknown = sorted(deleted - labels)
    if unknown:
        raise ValueError(f"{meta_path} lists deleted labels that {index_path} does not hold: {unknown[:10]}")
    for label in sorted(deleted):
        if _is_live(graph, label):
            raise ValueError(
                f"{meta_path} lists label {label} as deleted; it is live in {index_path}: rebuild the index"
            )
    live = np.sort(np.fromiter(labels - deleted, dtype=np.int64))
    for start in range(0, len(live), 65536):  # bounded memory: get_items copies the vectors out
        chunk = live[start : start + 65536]
        try:
            graph.get_items(chunk, return_type="numpy")
        except RuntimeError:
            dead = [int(x) for x in chunk if not _is_live(graph, int(x))]
            raise ValueError(
                f"{index_path} has deleted labels that {meta_path} lists as live: {dead[:10]}: rebuild the index"
            ) from None


def _is_live(graph: hnswlib.Index, label: int) -> bool:
    try:
        graph.get_items([label])
    except RuntimeError:
        return False
    return True
