"""Runs `twotower train` (the CLI's `main`) in forked children and SIGKILLs them at chosen moments.

Used by test_faults_sigkill.py as a subprocess: `python kill_runner.py SPEC.json`. The runner imports
the library once, then per scenario forks a child that installs the hooks below and calls
`twotower.cli.main(argv)` exactly as the `twotower` command does. The hooks count *events* (every
training step, every atomic file write, every safetensors write inside a directory being filled,
every rename, link, unlink and directory removal) in the order the run makes them; the run is
deterministic, so event i of one run is event i of the next. A census run (no kill) lists the
events; a kill run SIGKILLs itself at event `kill_at`: before a step, before a rename (the
temporary complete but not in place), before a removal, or after a write whose output it first
cuts to half its length (a write cut short). Then the scenario runs `--resume` to completion, and
when that finds nothing to resume (exit 2), a fresh run into the same directory.

SPEC: {"argv": [...], "workers": 2, "scenarios": [{"out": DIR, "kill_at": int | null}, ...],
"report": FILE}; the report lists per scenario what happened (JSON).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import safetensors.numpy  # noqa: E402
import safetensors.torch  # noqa: E402
import torch._dynamo  # noqa: E402, F401  (imported once here, not in every child: the optimizer pulls it in)

import twotower.atomic  # noqa: E402
import twotower.cli  # noqa: E402
import twotower.training.loop  # noqa: E402
from twotower.training.checkpoint import resumable_checkpoint  # noqa: E402
from twotower.training.fused_step import TableStep  # noqa: E402
from twotower.training.step import AutogradStep  # noqa: E402

_TMP = re.compile(r"\.([^/]*?)\.[A-Za-z0-9_]{8}\.tmp")  # mkstemp / mkdtemp names, made stable


class Hooks:
    def __init__(self, out: Path, kill_at: int | None, marker: Path) -> None:
        self.out, self.kill_at, self.marker = out.resolve(), kill_at, marker
        self.count, self.phase, self.events, self.removing = 0, "main", [], False

    def label(self, kind: str, path: object) -> str:
        if path is None:
            return kind
        text = os.fspath(path)
        if os.path.isabs(text):
            text = os.path.relpath(text, self.out)
        return kind + " " + _TMP.sub(r".\1.tmp", text)

    def counts(self, path: object) -> bool:
        """Whether a file operation on `path` is one of the run's: inside the run directory (a
        relative name: inside a directory being removed there), not e.g. numba's cache."""
        if path is None:
            return True
        text = os.fspath(path)
        if not os.path.isabs(text):
            return self.removing
        return os.path.abspath(text).startswith(f"{self.out}{os.sep}")

    def event(self, kind: str, path: object = None, cut: object = None) -> None:
        if not self.counts(path):
            return
        index, self.count = self.count, self.count + 1
        label = self.label(kind, path)
        if self.kill_at is None:
            self.events.append([self.phase, label])
            return
        if index != self.kill_at:
            return
        if cut is not None and os.path.isfile(cut):  # the write cut short: half of its bytes
            size = os.path.getsize(cut)
            os.truncate(cut, size // 2)
        self.marker.write_text(json.dumps([self.phase, label]))
        os.kill(os.getpid(), signal.SIGKILL)


def _replace_everywhere(original: object, replacement: object) -> None:
    """Points every twotower module's reference to `original` at `replacement` (names imported with
    `from ... import` live in each importing module)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("twotower") and module is not None:
            for attr, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attr, replacement)


def install(hooks: Hooks) -> None:
    real_atomic_write = twotower.atomic.atomic_write

    def atomic_write(path, write):
        def hooked(tmp):
            write(tmp)
            hooks.event("write", path, cut=tmp)

        return real_atomic_write(path, hooked)

    _replace_everywhere(real_atomic_write, atomic_write)

    for real in (safetensors.torch.save_file, safetensors.numpy.save_file):
        def save(tensors, filename, *args, _real=real, **kwargs):
            result = _real(tensors, filename, *args, **kwargs)
            hooks.event("save", filename, cut=filename)
            return result

        _replace_everywhere(real, save)

    for step_class in (AutogradStep, TableStep):
        def update(self, loss, _real=step_class.update):
            hooks.event("step")
            return _real(self, loss)

        step_class.update = update

    real_replace, real_link, real_unlink, real_rmtree = os.replace, os.link, os.unlink, twotower.atomic.shutil.rmtree

    def replace(src, dst, *args, **kwargs):
        hooks.event("replace", dst)
        return real_replace(src, dst, *args, **kwargs)

    def link(src, dst, *args, **kwargs):
        hooks.event("link", dst)
        return real_link(src, dst, *args, **kwargs)

    def unlink(path, *args, **kwargs):
        hooks.event("unlink", path)
        return real_unlink(path, *args, **kwargs)

    def rmtree(path, *args, **kwargs):
        hooks.event("rmtree", path)
        outer, hooks.removing = hooks.removing, hooks.counts(path)
        try:
            return real_rmtree(path, *args, **kwargs)
        finally:
            hooks.removing = outer

    os.replace, os.link, os.unlink = replace, link, unlink
    twotower.atomic.shutil.rmtree = rmtree  # the shutil module: checkpoint pruning and the loop use it too

    real_refit = twotower.training.loop._refit

    def refit(*args, **kwargs):
        hooks.phase = "refit"
        return real_refit(*args, **kwargs)

    twotower.training.loop._refit = refit


def _child(argv: list[str], log: Path, hooks: Hooks | None) -> None:
    """In a forked child: the CLI, its output in `log`.out / .err, exit with its status."""
    code = 70
    try:
        for fd, suffix in ((1, ".out"), (2, ".err")):
            handle = os.open(f"{log}{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        if hooks is not None:
            install(hooks)
        try:
            code = twotower.cli.main(argv)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
        if hooks is not None and hooks.kill_at is None:
            hooks.marker.write_text(json.dumps(hooks.events))
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _fork(argv: list[str], log: Path, hooks: Hooks | None = None) -> dict:
    pid = os.fork()
    if pid == 0:
        _child(argv, log, hooks)
    _, status = os.waitpid(pid, 0)
    err = Path(f"{log}.err").read_text(errors="replace")
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status), "stderr": err[-2000:]}
    return {"rc": os.WEXITSTATUS(status), "stderr": err[-2000:]}


def scenario(argv: list[str], out: Path, kill_at: int | None) -> dict:
    started = time.perf_counter()
    marker = Path(f"{out}.marker.json")
    first = _fork([*argv, "--out", str(out)], Path(f"{out}.first"), Hooks(out, kill_at, marker))
    report = {"out": str(out), "kill_at": kill_at, "first": first}
    if marker.is_file():
        report["marker"] = json.loads(marker.read_text())
    if kill_at is not None and first.get("signal") == signal.SIGKILL:
        intact, _ = resumable_checkpoint(out / "checkpoints")
        report["intact_after_kill"] = None if intact is None else intact.name
        report["resume"] = _fork([*argv, "--out", str(out), "--resume"], Path(f"{out}.resume"))
        if report["resume"].get("rc") != 0:
            report["fresh"] = _fork([*argv, "--out", str(out)], Path(f"{out}.fresh"))
    report["seconds"] = time.perf_counter() - started
    return report


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    argv, workers = spec["argv"], max(1, int(spec.get("workers", 1)))
    pending = list(enumerate(spec["scenarios"]))
    running: dict[int, int] = {}
    while pending or running:
        while pending and len(running) < workers:
            index, entry = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    result = scenario(argv, Path(entry["out"]), entry["kill_at"])
                    Path(f"{entry['out']}.report.json").write_text(json.dumps(result))
                    code = 0
                finally:
                    os._exit(code)
            running[pid] = index
        pid, _ = os.wait()
        running.pop(pid, None)
    reports = []
    for entry in spec["scenarios"]:
        path = Path(f"{entry['out']}.report.json")
        reports.append(json.loads(path.read_text()) if path.is_file() else {"out": entry["out"], "missing": True})
    Path(spec["report"]).write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
