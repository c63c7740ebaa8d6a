"""The device streaming frequency estimator against the host one (`kernels.frequency`): the same
estimates and the same state, number for number, on Zipf streams; states interchangeable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.kernels.frequency import StreamingFrequencyEstimator
from twotower.kernels.frequency_device import DeviceFrequencyEstimator

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU check runs these on CUDA


@pytest.mark.parametrize("buckets,hashes,rate", [(16, 1, 0.05), (97, 2, 0.2), (4096, 3, 0.01)])
def test_the_device_estimator_gives_the_host_estimators_numbers(buckets: int, hashes: int, rate: float) -> None:
    rng = np.random.default_rng(buckets)
    host = StreamingFrequencyEstimator(buckets, num_hashes=hashes, learning_rate=rate, seed=buckets)
    device = DeviceFrequencyEstimator(buckets, num_hashes=hashes, learning_rate=rate, seed=buckets, device=DEVICE)
    queries = np.arange(3000)
    for _ in range(80):
        items = rng.zipf(1.3, size=64) % 3000  # repeats within a batch, collisions between items
        host.update(items)
        device.update(torch.from_numpy(items).to(DEVICE))
    np.testing.assert_array_equal(device.probability(torch.from_numpy(queries)).cpu().numpy(),
                                  host.probability(queries))
    mine, theirs = device.state_dict(), host.state_dict()
    assert sorted(mine) == sorted(theirs)
    for name in theirs:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    assert (host.probability(queries) > 0).sum() > 100  # the stream reached many buckets


def test_states_are_interchangeable_and_checked() -> None:
    host = StreamingFrequencyEstimator(50, num_hashes=2, seed=1)
    host.update(np.array([1, 2, 2, 7]))
    device = DeviceFrequencyEstimator(50, num_hashes=2, learning_rate=0.05, seed=9, device=DEVICE)
    device.load_state_dict(host.state_dict())
    items = np.array([1, 2, 3, 7])
    np.testing.assert_array_equal(device.probability(torch.from_numpy(items)).cpu().numpy(), host.probability(items))
    with pytest.raises(ValueError, match="shape"):
        DeviceFrequencyEstimator(60, num_hashes=2, learning_rate=0.05, seed=1, device=DEVICE).load_state_dict(
            host.state_dict())
    with pytest.raises(ValueError, match="num_buckets"):
        DeviceFrequencyEstimator(0, num_hashes=2, learning_rate=0.05, seed=1, device=DEVICE)
