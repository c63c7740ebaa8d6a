"""`twotower.training.hardware.tune_allocator`: a freed large block is reused, not faulted back in."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# Allocates, touches and frees blocks of 24 MiB growing by 256 KiB (as a step's temporaries vary
# with the batch) and prints the minor page faults of each round.
_ROUNDS = """
import json, resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from twotower.training.hardware import tune_allocator
    assert tune_allocator()
faults = []
for i in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(((24 << 20) + i * (256 << 10)) // 8)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""

glibc_only = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt tuning exists on Linux with glibc only (elsewhere a no-op)")


def _faults(mode: str) -> list[int]:
    done = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@glibc_only
def test_tuned_allocator_reuses_a_freed_block_instead_of_faulting_it_back_in():
    plain, tuned = _faults("plain"), _faults("tuned")
    # Untuned glibc maps every growing block afresh: each round faults in all of it again.
    assert sum(plain[1:]) / len(plain[1:]) > 0.4 * plain[0], plain
    # Tuned, a round faults in only what the block grew by (1/96 of it), not the block.
    assert max(tuned[1:]) < 0.2 * tuned[0], tuned


@glibc_only
def test_tune_allocator_says_it_is_tuned_and_is_idempotent():
    from twotower.training.hardware import tune_allocator

    assert tune_allocator() is True
    assert tune_allocator() is True


def test_torch_threads_sets_the_count_inside_the_block_and_restores_it_after():
    import os

    import torch

    from twotower.training.hardware import torch_threads

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch_threads(None):
            assert torch.get_num_threads() == (os.cpu_count() or 1)  # None: every core
        assert torch.get_num_threads() == 1
        with pytest.raises(RuntimeError, match="inside"), torch_threads(3):
            assert torch.get_num_threads() == 3
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 1  # restored after an error too
    finally:
        torch.set_num_threads(previous)
