"""Atomic writes: a file or directory appears complete under its final name or not at all.

Everything a user saves (models, checkpoints, vocabularies, indexes, plots, results) goes through
here: written under a temporary name in the same directory, then renamed over the final name.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TMP_SUFFIX = ".tmp"


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask can only be read
    by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, directory: bool) -> None:
    """mkstemp / mkdtemp create 0600 / 0700 entries; a saved model should be readable as any file the
    user creates is (0666 / 0777 less the umask), e.g. by a serving process under another account."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def named_error(err: OSError, final: str | os.PathLike[str], tmp: str | os.PathLike[str] | None = None) -> OSError:
    """`err` (same errno) naming the file being written by its final path: a failed write(2) -- a
    full disk (ENOSPC), a failing device (EIO) -- names no file, and an error naming a temporary
    (`tmp`, a file inside it, a `.NAME.*.tmp` or `.NAME.old` beside `final`) names the place it was
    going. An error that names another file (one being read) is returned as it is."""
    final = Path(final)
    if err.errno is None:
        return err
    names = [Path(os.fsdecode(n)) for n in (err.filename, err.filename2) if isinstance(n, (str, bytes, os.PathLike))]
    where = next((w for w in (_final_name(n, final, tmp) for n in names) if w is not None), None)
    if where is None:
        if names:
            return err
        where = final
    if err.filename2 is None and err.filename is not None and Path(os.fsdecode(err.filename)) == where:
        return err
    return OSError(err.errno, err.strerror, str(where))


def _final_name(name: Path, final: Path, tmp: str | os.PathLike[str] | None) -> Path | None:
    if tmp is not None:
        tmp = Path(tmp)
        if name == tmp:
            return final
        if tmp in name.parents:
            return final / name.relative_to(tmp)
    if name == final or name == final.with_name(f".{final.name}.old"):
        return final
    if name.parent == final.parent and name.name.startswith(f".{final.name}.") and name.name.endswith(_TMP_SUFFIX):
        return final
    return None


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Calls `write(tmp)` for a temporary path beside `path`, then renames it to `path`. An OSError
    (a full disk, a failing device) names `path`, with its errno (see `named_error`)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise named_error(err, path) from err
    os.close(fd)
    try:
        write(Path(tmp))
        _usual_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise named_error(err, path, tmp) from err
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """JSON with sorted keys; values JSON cannot hold (paths, NumPy scalars) are written as strings."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def write_dir_atomic(final: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Creates directory `final` by filling a temporary sibling and renaming it into place; an older
    `final` is swapped out only once the new one is complete. An OSError names the file of `final`
    being written (or `final`), with its errno (see `named_error`)."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=_TMP_SUFFIX))
    except OSError as err:
        raise named_error(err, final) from err
    try:
        fill(tmp)
        _usual_mode(tmp, directory=True)
        for entry in tmp.iterdir():  # writers that stage through their own temporary files leave 0600
            if entry.is_file() and not entry.is_symlink():
                _usual_mode(entry, directory=False)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        old = final.with_name(f".{final.name}.old")
        if old.is_dir() and not final.exists():  # the swap failed half-way: the older one goes back
            try:
                os.replace(old, final)
            except OSError:
                pass  # left as .NAME.old, which the next run's clean-up removes
        if isinstance(err, OSError):
            raise named_error(err, final, tmp) from err
        raise
    return final


def link_if_identical(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> bool:
    """Makes `target` a hard link of `source` when both files hold the same bytes, so that one copy
    is stored; the link replaces `target` in one rename, so a reader sees the old file or the link.

    Returns:
        True when `target` is (now) the same file as `source`; False when the contents differ, a
        file is missing, or the filesystem has no hard links (both copies then stay).
    """
    source, target = Path(source), Path(target)
    if not (source.is_file() and target.is_file()):
        return False
    if os.path.samefile(source, target):
        return True
    if source.stat().st_size != target.stat().st_size or not filecmp.cmp(source, target, shallow=False):
        return False
    tmp = target.with_name(f".{target.name}.link{_TMP_SUFFIX}")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def disk_usage(path: str | os.PathLike[str]) -> int:
    """Bytes the files under `path` occupy (their sizes), a file with several hard links counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            info = os.lstat(os.path.join(root, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def remove_stale_temporaries(directory: str | os.PathLike[str], name: str) -> list[Path]:
    """Deletes what a killed writer left of `name` in `directory`: the temporaries `.NAME.*.tmp`
    of `atomic_write` / `write_dir_atomic` and the `.NAME.old` of a swap. Only for directories one
    process writes (a training run's output), where no other writer can be mid-way. `name` may be a
    glob (`epoch-*`). Returns what was removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for pattern in (f".{name}.*{_TMP_SUFFIX}", f".{name}.old"):
        for path in directory.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex digest), read in blocks: what a saved file's manifest
    records so that a later load can tell the bytes are the ones written."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()



MANIFEST = "manifest.json"


def write_manifest(directory: str | os.PathLike[str], *, skip: tuple[str, ...] = ()) -> Path:
    """Records the SHA-256 of every file in `directory` (but `skip` and the manifest itself) in
    `directory/manifest.json`, so that a later load can tell every file holds the bytes written
    (a file covered by another's checksum, e.g. weights whose hash config.json holds, can be skipped)."""
    directory = Path(directory)
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST and p.name not in skip)
    return write_json_atomic(directory / MANIFEST, {"sha256": {name: file_sha256(directory / name) for name in names}})


def drop_from_manifest(directory: str | os.PathLike[str], names: tuple[str, ...]) -> None:
    """Removes `names` from `directory`'s manifest (before those files are deleted: a deletion cut
    short then leaves unlisted files, never listed ones that are gone). No manifest: nothing to do."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return
    manifest = read_json_object(path)
    manifest["sha256"] = {name: digest for name, digest in manifest["sha256"].items() if name not in names}
    write_json_atomic(path, manifest)


def manifest_problem(directory: str | os.PathLike[str]) -> str | None:
    """The first file listed in `directory`'s manifest that is missing or whose bytes changed since,
    as a phrase naming it ("seen.safetensors does not match its SHA-256 in manifest.json"), or None
    when every listed file matches. A directory without a manifest (written before manifests
    existed) has nothing to check; files not listed (added later, e.g. an index) are not checked."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        listed = read_json_object(path).get("sha256")
    except (OSError, ValueError):
        listed = None
    if not isinstance(listed, dict):
        return f"{MANIFEST} is unreadable"
    for name, digest in sorted(listed.items()):
        if not (directory / name).is_file():
            return f"{name} is missing (listed in {MANIFEST})"
        actual = file_sha256(directory / name)
        if actual != digest:
            return (f"{name} does not match its SHA-256 in {MANIFEST} "
                    f"(recorded {digest[:12]}..., found {actual[:12]}...)")
    return None


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object in file `path`: the one reader of every JSON file the library writes (settings,
    manifests, checkpoints' state, index descriptions), so that each bad file gets the same clear error.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not UTF-8 JSON, or JSON that is not an object (the file named).
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a JSON object")
    return value
