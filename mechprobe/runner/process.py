"""Process-wide settings a computation may touch, put back as they were.

A library call must leave the process as it found it: torch's intra-op thread count, its global
RNG (state and initial seed), NumPy's and Python's global RNGs and the umask. `preserved_state`
records them before a computation and restores whatever changed after it, also on an error.

Example:
    >>> import torch
    >>> before = torch.get_num_threads(), torch.initial_seed()
    >>> with preserved_state():
    ...     torch.set_num_threads(1)
    ...     _ = torch.manual_seed(123)
    >>> (torch.get_num_threads(), torch.initial_seed()) == before
    True
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from mechprobe.io import _umask as current_umask


@contextmanager
def preserved_state() -> Iterator[None]:
    """Restore torch's threads and RNG, NumPy's and Python's RNGs and the umask on exit."""
    import torch

    threads = torch.get_num_threads()
    seed, state = torch.initial_seed(), torch.random.get_rng_state()
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global RNG is what we keep)
    py_state, mask = random.getstate(), current_umask()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if torch.initial_seed() != seed:
            torch.manual_seed(seed)
        torch.random.set_rng_state(state)
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
        if current_umask() != mask:
            os.umask(mask)
