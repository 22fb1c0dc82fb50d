"""Types of the C extension ``mechprobe.stats._native`` (source ``_native.c``)."""

import numpy as np

COMPILER: str
FLAGS: str
DISPATCH: str

def sums(xs: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray, /) -> None: ...
def prepare(
    x: np.ndarray,
    order: np.ndarray,
    n1: int,
    xs: np.ndarray,
    xs32: np.ndarray,
    stats: np.ndarray,
    /,
) -> None: ...
def count_above(xs: np.ndarray, n1: int, thr: np.ndarray, out: np.ndarray, /) -> None: ...
