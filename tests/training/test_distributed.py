"""Distributed training (issue 18) on 2 Gloo processes of this machine: the equivalence of a
2-rank step with one process on the concatenated global batch, for every kind of loss and tower.

Each rank is a subprocess with its own timeout, killed if the test fails first; the rendezvous is
on 127.0.0.1 at a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.distributed_worker import CASES, case_config, train_case, write_data
from twotower.datasets import load_dataset
from twotower.training.distributed import Cluster

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # a backstop: the collectives time out after 60 s; a cold Numba cache compiles for a minute


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(args: list[str], world: int, timeout: float = TIMEOUT) -> list[subprocess.CompletedProcess]:
    """Runs `python -m tests.training.distributed_worker ARGS` as `world` ranks of one group; kills
    every rank still running when one fails or the time is up."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world),
           "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.training.distributed_worker", *args],
                              cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for r, result in enumerate(results):
        assert result.returncode == 0, f"rank {r} failed:\n{result.stderr[-3000:]}"
    return results


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_data(root)
    return root


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory) -> Path:
    """Every case trained by 2 ranks (one launch: each process pays torch's import once)."""
    out = tmp_path_factory.mktemp("ranks")
    run_ranks([str(data), str(out / "{case}-{rank}.pt"), *sorted(CASES)], world=2)
    return out


@pytest.mark.slow  # the 2-rank launch of the fixture takes about 20 s
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_train_as_one_process_on_the_global_batch(case, data, two_ranks) -> None:
    """Loss of every step and every parameter after the steps (float64, Adam, gradient clipping, a
    learned temperature) equal one process's on the ranks' batches concatenated; both ranks hold
    the same weights."""
    reference = train_case(case, data, Cluster(), reference=2)
    for rank in (0, 1):
        trained = torch.load(two_ranks / f"{case}-{rank}.pt")
        assert trained.keys() == reference.keys()
        for name, expected in reference.items():
            torch.testing.assert_close(trained[name], expected, rtol=1e-9, atol=1e-11, msg=f"rank {rank}: {name}")


def test_the_fused_table_step_gives_way_to_the_distributed_step_and_says_so(data) -> None:
    """An MF model with a per-row loss would take the fused step in one process; across ranks the
    distributed autograd step trains it, and the run's log says so."""
    from twotower.training.distributed import DistributedStep
    from twotower.training.loop import _build_run

    config = case_config("sampled_ids", data)
    lines: list[str] = []
    run = _build_run(config, data / "run", torch.device("cpu"), load_dataset(config.data), lines.append, None,
                     Cluster(0, 2, 0, 2))
    assert isinstance(run.train_step, DistributedStep)
    assert any("fused table step (train.fused_step) does not run in distributed training" in line for line in lines)
    assert run.batches.shard == (0, 2)
