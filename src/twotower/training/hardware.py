"""What the training run asks of the machine it runs on: torch threads for the step and after it, whether the
CPU does bfloat16 arithmetic, and how the C allocator treats the step's large temporaries."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import sys
from collections.abc import Iterator

import torch

__all__ = ["cpu_has_bf16", "eval_threads", "step_threads", "torch_threads", "tune_allocator"]

log = logging.getLogger("twotower.training")

# glibc's mallopt parameters (malloc.h) and the values `tune_allocator` sets.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit systems
_TRIM_THRESHOLD = 1 << 30

_tuned = False


def cpu_has_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (AVX512-BF16 or AMX), as oneDNN, which
    runs torch's bfloat16 matrix products on the CPU, can use it."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def step_threads(num_threads: int, device: torch.device, local_ranks: int = 1) -> int:
    """Torch threads of the training step: `num_threads` when set; on a CPU otherwise all cores
    but one, which the batch iterator's worker thread keeps busy sampling the next batches (on 2
    cores a second torch thread slowed an ML-100K step: a training step is many small ops, each
    waking the pool), the cores shared out among the `local_ranks` processes of this machine; on
    CUDA torch's current setting."""
    if num_threads:
        return num_threads
    if device.type != "cpu":
        return torch.get_num_threads()
    return max(1, (os.cpu_count() or 1) // local_ranks - 1)


def eval_threads(num_threads: int, local_ranks: int = 1) -> int | None:
    """Scorer threads of an evaluation: `num_threads` when set; else None (all cores) in one
    process, or the cores shared out among the `local_ranks` processes of this machine when they
    evaluate at the same time (a sharded validation)."""
    if num_threads:
        return num_threads
    if local_ranks <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // local_ranks)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to `count` (None: every core) inside the block, restored after
    it: work after training (the graph filter's sparse products, its rankings) gets the cores the
    batch worker no longer needs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tune_allocator() -> bool:
    """Keeps the CPU step's large temporaries in the heap between steps (Linux with glibc; a no-op
    elsewhere); returns whether the allocator is tuned.

    A training step allocates and frees tensors of tens of megabytes (the sparse gradient rows of a
    pooled history, the loss's logit blocks) whose sizes change from batch to batch. glibc serves
    such blocks with mmap and returns them to the kernel on free, so every step pays page faults and
    zero-filling for memory it just gave back (`benchmarks/results/allocator.md` measures the step).
    Fixing the mmap threshold at its largest value (32 MiB) and trimming the heap only past 1 GiB of
    free memory at its top lets a freed block be reused at once. The setting is process-wide and
    stays for the life of the process; memory a run freed is then kept by the process, not returned.
    """
    global _tuned
    if _tuned:
        return True
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    if not _tuned:
        log.debug("train.tune_allocator: glibc refused mallopt; the allocator keeps its defaults")
    return _tuned
