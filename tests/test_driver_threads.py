"""The sweep's driver computes (baselines, summary) on one thread: it reserves no CPU."""

from __future__ import annotations

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from sweeps.cluster import driver_threads


def _pool_sizes() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info()}


def test_driver_threads_limits_torch_and_blas_and_restores_them():
    np.ones((64, 64)) @ np.ones((64, 64))  # loads the BLAS, so that threadpoolctl sees it
    before = torch.get_num_threads()
    # Two threads everywhere first, as in a driver on 2 cores (whatever OMP_NUM_THREADS
    # this test process was started with).
    torch.set_num_threads(2)
    try:
        with threadpool_limits(limits=2):
            assert _pool_sizes() == {2}
            with driver_threads():
                assert torch.get_num_threads() == 1
                assert _pool_sizes() == {1}
            assert torch.get_num_threads() == 2
            assert _pool_sizes() == {2}
    finally:
        torch.set_num_threads(before)
