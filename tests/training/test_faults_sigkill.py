"""Fault injection, SIGKILL: `twotower train` killed at 20 seeded moments across a run (steps mid-epoch,
the first and later checkpoints' files and renames, the LATEST pointer, best/, the final model
directory, results.json, the clean-up of a finished run, the refit phase), each followed by
`twotower train --resume` with the same flags, must finish with the bytes of weights and the test
metrics of a run never interrupted. Where the kill left no intact checkpoint (inside the very first
one), `--resume` says so in one line naming the directory (exit 2), and a fresh run into the same
`--out` succeeds and matches too.

The kill points are events counted by kill_runner.py's hooks in a deterministic run, not moments
in time: a census run lists them, and a seeded draw picks 20 of them per category.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from twotower.model.model_dir import load_model_dir

FLAGS = ["train", "--data.synthetic_users", "300", "--data.synthetic_items", "200", "--model.embedding_dim", "16",
         "--batches.batch_size", "256", "--train.epochs", "3", "--train.num_threads", "1", "--train.refit", "--quiet"]
SEED = 16
# How many of the 20 kills land in each part of a run.
QUOTAS = {"step": 3, "first checkpoint": 2, "checkpoint": 3, "LATEST": 2, "best/": 2, "model/": 2, "results.json": 2,
          "clean-up and logs": 1, "refit": 3}
RUNNER = Path(__file__).with_name("kill_runner.py")


def categories(events: list[list[str]]) -> dict[str, list[int]]:
    """The census's event indices by the part of the run they belong to."""
    first_pointer = next(i for i, (_, label) in enumerate(events) if label == "replace checkpoints/LATEST")
    found: dict[str, list[int]] = {name: [] for name in QUOTAS}
    for index, (phase, label) in enumerate(events):
        kind, _, path = label.partition(" ")
        if phase == "refit":
            name = "refit"
        elif kind == "step":
            name = "step"
        elif path.startswith("checkpoints/") and "LATEST" in path:
            name = "LATEST"
        elif path.startswith("checkpoints/"):
            name = "first checkpoint" if index < first_pointer else "checkpoint"
        elif path == "best" or path.startswith((".best.", "best/")):
            name = "best/"
        elif path == "model" or path.startswith((".model.", "model/")):
            name = "model/"
        elif path in ("results.json", ".results.json.tmp"):
            name = "results.json"
        else:
            name = "clean-up and logs"
        found[name].append(index)
    return found


def draw(events: list[list[str]], seed: int = SEED) -> list[int]:
    rng = random.Random(seed)
    found = categories(events)
    return sorted(index for name, count in QUOTAS.items() for index in rng.sample(found[name], count))


def run_runner(tmp_path: Path, name: str, scenarios: list[dict]) -> list[dict]:
    spec = {"argv": FLAGS, "workers": 2, "scenarios": scenarios, "report": str(tmp_path / f"{name}.json")}
    (tmp_path / f"{name}.spec.json").write_text(json.dumps(spec))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(RUNNER), str(tmp_path / f"{name}.spec.json")], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads((tmp_path / f"{name}.json").read_text())


def leftovers(out: Path) -> list[str]:
    """Temporaries of atomic writes and swaps still in the run directory."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith((".tmp", ".old")))


@pytest.mark.slow
def test_sigkill_at_20_seeded_moments_then_resume_is_bit_identical(tmp_path):
    [census] = run_runner(tmp_path, "census", [{"out": str(tmp_path / "straight"), "kill_at": None}])
    assert census["first"] == {"rc": 0, "stderr": ""}
    events = census["marker"]
    points = draw(events)
    assert len(points) == 20 == len(set(points))
    reports = run_runner(tmp_path, "kills", [{"out": str(tmp_path / f"kill-{i:03d}"), "kill_at": i} for i in points])

    straight = tmp_path / "straight"
    want = {part: (straight / part / "model" / "model.safetensors").read_bytes() for part in (".", "refit")}
    want_results = json.loads((straight / "results.json").read_text())
    survived, bit_identical, fresh = [], [], []
    for index, report in zip(points, reports, strict=True):
        out = Path(report["out"])
        where = f"kill at event {index} {events[index]}: {report}"
        assert report["first"].get("signal") == 9, where  # killed, not finished or failed
        assert report["marker"] == events[index], where  # the same event as in the census
        if report["intact_after_kill"] is None:
            # Nothing to resume: a one-line error naming the checkpoint directory, then a fresh run.
            assert report["resume"]["rc"] == 2, where
            assert report["resume"]["stderr"] == (
                f"twotower: error: --resume: no intact checkpoint in {out / 'checkpoints'}\n"), where
            assert report["fresh"]["rc"] == 0, where
            fresh.append(index)
        else:
            assert report["resume"]["rc"] == 0, where
            assert "Traceback" not in report["resume"]["stderr"], where
        survived.append(index)
        got = {part: (out / part / "model" / "model.safetensors").read_bytes() for part in (".", "refit")}
        assert got == want, where
        results = json.loads((out / "results.json").read_text())
        assert results["test"]["metrics"] == want_results["test"]["metrics"], where
        assert results["refit"]["test"]["metrics"] == want_results["refit"]["test"]["metrics"], where
        assert leftovers(out) == [], where
        load_model_dir(out / "model")  # checksums and manifest agree
        bit_identical.append(index)
    kinds = {name: sum(index in found for index in points) for name, found in categories(events).items()}
    print(f"\n{len(events)} events in a run; kills: {kinds}; survived {len(survived)} of {len(points)}, "
          f"bit-identical {len(bit_identical)} of {len(points)}, {len(fresh)} with nothing to resume (fresh rerun); "
          f"seconds per scenario: {[round(r['seconds'], 1) for r in reports]}")
    assert len(bit_identical) == 20
    assert fresh, "the draw should include a kill before the first checkpoint (nothing to resume)"
