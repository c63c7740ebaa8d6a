"""`twotower train` under torchrun (issue 18): 2 ranks on one node and 2 "nodes" on loopback, a
killed rank ending the job, `--resume` continuing bit-identically, another world size refused.

Every launch is a process group of its own with a timeout, killed whole if the test fails first;
rendezvous on 127.0.0.1 at a free port. Tiny synthetic data (no files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from tests.training.test_distributed import ROOT, free_port
from twotower.cli import main

pytestmark = pytest.mark.slow

TINY = ["--data.synthetic_users", "300", "--data.synthetic_items", "200", "--data.synthetic_interactions_per_user",
        "20", "--model.embedding_dim", "16", "--batches.batch_size", "64", "--batches.num_shared_negatives", "32",
        "--train.num_threads", "1", "--train.distributed_timeout", "60", "--quiet"]
TIMEOUT = 240


def torchrun(out: Path, *flags: str, nproc: int = 2, nnodes: int = 1, port: int | None = None) -> subprocess.Popen:
    """`torchrun ... -m twotower train --out OUT FLAGS` in a new session (killed as a group)."""
    port = port or free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc_per_node", str(nproc),
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "twotower-test",
               "-m", "twotower", "train", "--out", str(out), *TINY, *flags]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.Popen(command, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(*launches: subprocess.Popen, timeout: float = TIMEOUT) -> list[tuple[int, str, str]]:
    """Waits for every launch; kills all of them (their whole process groups) on a timeout or an error."""
    results = []
    try:
        for launch in launches:
            out, err = launch.communicate(timeout=timeout)
            results.append((launch.returncode, out, err))
    finally:
        for launch in launches:
            if launch.poll() is None:
                os.killpg(launch.pid, signal.SIGKILL)
                launch.wait()
    return results


def rank_pids(launch: subprocess.Popen) -> dict[int, int]:
    """The worker processes of a torchrun launch (children of its agent, each in a session of its own) by
    their RANK."""
    pids = subprocess.run(["pgrep", "-P", str(launch.pid)], capture_output=True, text=True).stdout.split()
    ranks = {}
    for pid in pids:
        try:
            entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        env = dict(entry.split(b"=", 1) for entry in entries if b"=" in entry)
        if b"RANK" in env and b"TORCHELASTIC_RUN_ID" in env:
            ranks[int(env[b"RANK"])] = int(pid)
    return ranks


def weights(run: Path) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name in first:
        assert (first[name] == second[name]).all(), name


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run of 3 epochs."""
    out = tmp_path_factory.mktemp("two") / "run"
    (code, stdout, stderr), = finish(torchrun(out, "--train.epochs", "3"))
    assert code == 0, stderr[-3000:]
    assert len([line for line in stdout.splitlines() if line.startswith("model") and ", test" in line]) == 1  # rank 0
    assert "distributed: 2 ranks, global batch 128 (64 per rank)" in stdout
    return out


def test_two_ranks_write_one_run_directory(two_ranks) -> None:
    results = json.loads((two_ranks / "results.json").read_text())
    assert results["test"]["metrics"]["ndcg@10"] > results["popularity"]["test"]["metrics"]["ndcg@10"] * 0.5
    assert len((two_ranks / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((two_ranks / "checkpoints" / "epoch-0003" / "trainer.json").read_text())["world"] == 2


def test_a_killed_rank_ends_the_job_and_resume_finishes_it_bit_identically(two_ranks, tmp_path) -> None:
    out = tmp_path / "run"
    launch = torchrun(out, "--train.epochs", "3")
    deadline = time.monotonic() + TIMEOUT
    while not (out / "checkpoints" / "epoch-0001").is_dir():  # then kill rank 1 in epoch 2
        assert launch.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(rank_pids(launch)[1], signal.SIGKILL)
    (code, _, stderr), = finish(launch)
    assert code != 0
    assert "rank      : 1" in stderr or "rank: 1" in stderr, stderr[-2000:]  # torchrun names the failed rank
    (code, _, stderr), = finish(torchrun(out, "--train.epochs", "3", "--resume"))
    assert code == 0, stderr[-3000:]
    assert_same_weights(out, two_ranks)


def test_resume_with_another_world_size_is_refused(two_ranks, capsys) -> None:
    code = main(["train", "--resume", "--out", str(two_ranks), *TINY, "--train.epochs", "3"])
    assert code == 2
    assert "was written by a run of 2 process(es) and this run has 1" in capsys.readouterr().err


def test_two_nodes_on_loopback_train_as_two_local_ranks(two_ranks, tmp_path) -> None:
    """Two torchrun invocations of one process each (--nnodes 2) give the 2-rank run's model."""
    port = free_port()
    out = tmp_path / "run"
    launches = [torchrun(out, "--train.epochs", "3", nproc=1, nnodes=2, port=port) for _ in range(2)]
    for code, _, stderr in finish(*launches):
        assert code == 0, stderr[-3000:]
    assert_same_weights(out, two_ranks)


def test_two_ranks_reach_the_quality_of_one_process_on_the_same_global_batch(two_ranks, tmp_path) -> None:
    """Test NDCG@10 of the 2-rank run (64 rows and 32 shared negatives per rank) and of one process
    with the global batch (128 rows, 64 shared) agree within seed noise: 0.1012, 0.1136 and 0.0968
    for one process with seeds 0, 1, 2 when this test was written, 0.1015 for the ranks."""
    flags = [*TINY, "--batches.batch_size", "128", "--batches.num_shared_negatives", "64", "--train.epochs", "3"]
    assert main(["train", "--out", str(tmp_path / "one"), *flags]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())["test"]["metrics"]["ndcg@10"]
    two = json.loads((two_ranks / "results.json").read_text())["test"]["metrics"]["ndcg@10"]
    assert abs(one - two) < 0.03


def test_settings_that_cannot_train_across_ranks_end_every_rank_naming_it(tmp_path) -> None:
    (code, _, stderr), = finish(torchrun(tmp_path / "run", "--loss.symmetric"))
    assert code != 0
    for rank in (0, 1):
        assert f"twotower: error (rank {rank} of 2): loss.symmetric is not supported in distributed" in stderr


def test_sharded_validation_gives_rank_zeros_metrics(two_ranks, tmp_path) -> None:
    """The default sharded validation (each rank ranks half the users, the sums all-reduced) gives
    every epoch the metrics rank 0 alone computes over all users, and the same run."""
    out = tmp_path / "rank0"
    (code, _, stderr), = finish(torchrun(out, "--train.epochs", "3", "--train.distributed_eval", "rank0"))
    assert code == 0, stderr[-3000:]

    def valid(run: Path) -> list[dict]:
        return [json.loads(line)["valid"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    sharded, alone = valid(two_ranks), valid(out)
    assert len(sharded) == len(alone) == 3
    for ours, theirs in zip(sharded, alone, strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-12, abs=1e-15), key
    assert_same_weights(out, two_ranks)
