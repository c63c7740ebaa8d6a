"""One run per output directory: the lock refuses a second run, names its holder, and dies with
the process that held it (a killed run leaves no stale lock)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from twotower.training.run_lock import LOCK_NAME, RunDirectoryLocked, run_lock

from .conftest import tiny_config


def test_a_second_holder_is_refused_and_the_first_is_named(tmp_path) -> None:
    with run_lock(tmp_path / "run") as out:
        assert out == tmp_path / "run" and out.is_dir()
        with pytest.raises(RunDirectoryLocked, match=rf"pid {os.getpid()} on {socket.gethostname()}, started 20"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):  # released at the end of the block
        pass


def test_fit_into_a_locked_directory_is_refused_before_writing(tmp_path) -> None:
    from twotower.training.loop import fit

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("the other run's log\n")
    with run_lock(out), pytest.raises(RunDirectoryLocked, match="in use by another run"):
        fit(tiny_config(), out, echo=lambda line: None)
    assert (out / "metrics.jsonl").read_text() == "the other run's log\n"
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "metrics.jsonl"]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path) -> None:
    holder = textwrap.dedent(f"""
        import time
        from twotower.training.run_lock import run_lock
        with run_lock({str(tmp_path / 'run')!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryLocked, match=f"pid {process.pid} "):
            with run_lock(tmp_path / "run"):
                pass
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.stdout.close()
    with run_lock(tmp_path / "run"):  # the kernel dropped the dead process's lock
        pass


def test_a_file_in_the_way_is_named(tmp_path) -> None:
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(ValueError, match="is a file; choose another --out"):
        with run_lock(tmp_path / "run"):
            pass


def test_a_fresh_run_says_it_replaces_an_earlier_runs_checkpoints(tmp_path) -> None:
    from twotower.training.loop import fit

    lines: list[str] = []
    fit(tiny_config(epochs=1), tmp_path, echo=lines.append)
    assert not any(line.startswith("notice:") for line in lines)  # nothing there to replace
    fit(tiny_config(epochs=1), tmp_path, echo=lines.append)
    assert any(line.startswith("notice:") and "earlier run's checkpoints (newest: epoch-0001)" in line
               and "--resume continues that run" in line for line in lines)


@pytest.mark.parametrize(("resume", "hint"), [(False, "the same command with --resume continues"),
                                              (True, "run it again to continue")])
def test_ctrl_c_in_training_says_how_to_go_on(tmp_path, monkeypatch, capsys, resume: bool, hint: str) -> None:
    import twotower.training.loop
    from twotower.cli import main

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(twotower.training.loop, "fit", interrupted)
    argv = ["train", "--out", str(tmp_path), "--quiet"] + (["--resume"] if resume else [])
    assert main(argv) == 130
    assert f"twotower: interrupted; {hint}" in capsys.readouterr().err


def test_a_run_directory_given_for_a_model_says_where_the_model_is(tmp_path) -> None:
    from twotower.model.model_dir import load_model_dir
    from twotower.training.loop import fit

    fit(tiny_config(epochs=1), tmp_path / "run", echo=lambda line: None)
    with pytest.raises(FileNotFoundError, match=r"is a training run's directory, not a model directory: its model is "
                                                r".*run/model"):
        load_model_dir(tmp_path / "run")
    assert load_model_dir(tmp_path / "run" / "model").model.num_items == 200


def test_output_into_a_closed_pipe_ends_quietly(tmp_path) -> None:
    # `twotower data stats FILE | head`: the reader is gone before the command writes.
    data = tmp_path / "u.csv"
    data.write_text("user,item\n" + "".join(f"{u},{i}\n" for u in range(300) for i in range(u % 7, 40, 3)))
    process = subprocess.Popen([sys.executable, "-m", "twotower.cli", "data", "stats", str(data)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    try:
        err = process.stderr.read()
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
        process.stderr.close()
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err
