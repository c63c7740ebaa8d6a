"""Fault injection, ENOSPC and EIO: every way a training run writes a file (weights, optimizer and
loop state, vocabularies, seen items, JSON and text through the atomic writers, the metrics log's
appends, the plot, a new directory, a rename) fails once at a seeded call, as a full disk or a
failing device would: the write gets half its bytes out, then OSError with no file name (as
write(2) reports it).

What must hold, each time: the error reaching the user names the file being written (its final
path, not a temporary) and keeps its errno; through the CLI it is one line `twotower: error: ...`
with exit code 2; nothing half-written is left under a checkpoint's name (`resumable_checkpoint`
skips nothing), no temporaries are left behind; and once the space is back, resuming finishes with
the bytes of weights and the test metrics of a run that never failed.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import random
import re
import tempfile
from pathlib import Path

import matplotlib.figure
import pyarrow.parquet
import pytest

import twotower.atomic
import twotower.model.io
import twotower.model.model_dir
import twotower.training.checkpoint
from twotower.cli import _config_from_args, build_parser, main
from twotower.training.checkpoint import resumable_checkpoint
from twotower.training.loop import fit

FLAGS = ["train", "--data.synthetic_users", "300", "--data.synthetic_items", "200", "--model.embedding_dim", "16",
         "--batches.batch_size", "256", "--train.epochs", "3", "--train.num_threads", "1", "--quiet"]
SEED = 16
_TMP = re.compile(r"^\.(.*)\.[A-Za-z0-9_]{8}\.tmp$")  # a component of atomic.py's temporaries
_OLD = re.compile(r"^\.(.*)\.old$")


def final_path(path: str) -> str:
    """The name a write inside temporaries will have once in place: `.NAME.xxxxxxxx.tmp` (and the
    `.NAME.old` of a swap) -> NAME."""
    parts = Path(path).parts
    return str(Path(*(m.group(1) if (m := _TMP.match(part) or _OLD.match(part)) else part for part in parts)))


class Fault:
    """Counts a writer's calls on files of the run directory and fails the `at`-th (0: never)."""

    def __init__(self, out: Path, at: int, code: int) -> None:
        self.out, self.at, self.code = f"{Path(out).resolve()}{os.sep}", at, code
        self.calls, self.path = 0, None

    def hit(self, path: object) -> bool:
        path = os.path.abspath(os.fspath(path))
        if not path.startswith(self.out):
            return False
        self.calls += 1
        if self.calls != self.at:
            return False
        self.path = path
        return True

    def error(self, *names: str) -> OSError:
        return OSError(self.code, os.strerror(self.code), *names)


def _cut(path: object) -> None:
    """Half of the file's bytes stay: the write ran out of space part way."""
    if os.path.isfile(path):
        os.truncate(path, os.path.getsize(path) // 2)


def _file_writer(owner: object, name: str, index: int = 1):
    """Patches `owner.name(..., path at `index`, ...)`: the real write, then half of it cut, then the error."""

    def install(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
        real = getattr(owner, name)

        def writer(*args, **kwargs):
            result = real(*args, **kwargs)
            if fault.hit(args[index]):
                _cut(args[index])
                raise fault.error()
            return result

        monkeypatch.setattr(owner, name, writer)

    return install


def _text_writer(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    real = pathlib.Path.write_text

    def write_text(self, data, *args, **kwargs):
        if fault.hit(self):
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise fault.error()
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


class _FailingAppend:
    def __init__(self, handle, fault: Fault) -> None:
        self.handle, self.fault = handle, fault

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def write(self, text: str) -> int:
        self.handle.write(text[: len(text) // 2])
        raise self.fault.error()


def _log_appender(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    real = pathlib.Path.open

    def open_(self, mode="r", *args, **kwargs):
        handle = real(self, mode, *args, **kwargs)
        if "a" in mode and fault.hit(self):
            return _FailingAppend(handle, fault)
        return handle

    monkeypatch.setattr(pathlib.Path, "open", open_)


def _new_directory(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    real = tempfile.mkdtemp

    def mkdtemp(suffix=None, prefix=None, dir=None):
        if dir is not None and fault.hit(Path(dir) / f"{prefix}xxxxxxxx{suffix}"):
            fault.path = str(Path(dir).resolve() / f"{prefix}xxxxxxxx{suffix}")
            raise fault.error(fault.path)  # mkdir(2) names the directory it could not create
        return real(suffix=suffix, prefix=prefix, dir=dir)

    monkeypatch.setattr(twotower.atomic.tempfile, "mkdtemp", mkdtemp)


def _rename(monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if fault.hit(dst):
            raise fault.error(os.fspath(src), None, os.fspath(dst))  # rename(2) names both
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


# writer -> (installer, the names its files may have)
WRITERS = {
    "weights (safetensors)": _file_writer(twotower.model.io, "save_file"),
    "optimizer and loop state (safetensors)": _file_writer(twotower.training.checkpoint, "save_file"),
    "loop state (safetensors, numpy)": _file_writer(twotower.training.checkpoint, "save_numpy"),
    "seen items (safetensors)": _file_writer(twotower.model.model_dir, "save_file"),
    "vocabularies (parquet)": _file_writer(pyarrow.parquet, "write_table"),
    "JSON and text (atomic writers)": _text_writer,
    "metrics.jsonl append": _log_appender,
    "plot (png)": _file_writer(matplotlib.figure.Figure, "savefig"),
    "new directory (mkdtemp)": _new_directory,
    "rename (os.replace)": _rename,
}
CODES = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}


def config_for(out: Path):
    config = _config_from_args(build_parser().parse_args([*FLAGS, "--out", str(out)]))
    config.train.progress = False
    return config


def weights_and_metrics(out: Path) -> tuple[bytes, dict]:
    results = json.loads((out / "results.json").read_text())
    return (out / "model" / "model.safetensors").read_bytes(), results["test"]["metrics"]


def leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith((".tmp", ".old")))


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """A run that never failed, and how many calls each writer made on its files."""
    out = tmp_path_factory.mktemp("straight")
    faults = {name: Fault(out, 0, errno.ENOSPC) for name in WRITERS}
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # as conftest's cpu_loss_path, not yet applied here
        for name, install in WRITERS.items():
            install(monkeypatch, faults[name])
        fit(config_for(out), out)
    return out, {name: fault.calls for name, fault in faults.items()}


def test_every_writer_is_exercised(straight) -> None:
    _, calls = straight
    assert all(calls.values()), calls


@pytest.mark.slow
@pytest.mark.parametrize("code_name", sorted(CODES))
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_failed_write_is_named_leaves_nothing_half_written_and_resumes(straight, tmp_path, capsys, writer,
                                                                         code_name) -> None:
    reference, calls = straight
    code = CODES[code_name]
    at = random.Random(f"{SEED} {writer} {code_name}").randint(1, calls[writer])
    out = tmp_path / "run"
    fault = Fault(out, at, code)
    with pytest.MonkeyPatch.context() as monkeypatch:
        WRITERS[writer](monkeypatch, fault)
        if code == errno.ENOSPC:  # through the command line: one line, exit code 2
            assert main([*FLAGS, "--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("twotower: error: ") and "Traceback" not in err, err
            message = err
        else:  # through the library: the OSError itself
            with pytest.raises(OSError) as caught:
                fit(config_for(out), out)
            assert caught.value.errno == code
            assert caught.value.filename is not None and "tmp" not in Path(caught.value.filename).name
            message = str(caught.value)
    assert fault.path is not None, f"{writer} call {at} was never made"
    named = final_path(fault.path)  # the final path of the file (or directory) being written
    assert named in message and os.strerror(code) in message, (named, message)
    found, skipped = resumable_checkpoint(out / "checkpoints")
    assert skipped == [], skipped  # nothing half-written under a checkpoint's name
    assert leftovers(out) == []
    # Space is back: resume (or start again, when no checkpoint was complete) and finish the same.
    fit(config_for(out), out, resume=found is not None)
    assert weights_and_metrics(out) == weights_and_metrics(reference)
