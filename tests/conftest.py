"""Test-wide setup. Triton kernels run under the CPU interpreter when no CUDA device is present;
the variable must be set before triton is first imported, which is why it lives here."""

import importlib
import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if importlib.util.find_spec("triton") is not None:
        import triton

        if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7):
            # Seen with triton 3.6 and NumPy 2: its interpreter turns a loop bound such as
            # `pid * n` into a 1-element array that `range` rejects ("only 0-dimensional arrays can be
            # converted to Python scalars"). Compiled kernels on a GPU are not affected.
            raise pytest.UsageError(
                f"the Triton-interpreter tests need triton >= 3.7 (installed: {triton.__version__}); "
                "pip install 'triton>=3.7'"
            )
        # Triton decides at decoration time whether a kernel is interpreted: decorate them now, so
        # that tests which drop TRITON_INTERPRET for a while (the trainer's) cannot change that.
        importlib.import_module("twotower.kernels.infonce_triton")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
