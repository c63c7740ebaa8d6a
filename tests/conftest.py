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
