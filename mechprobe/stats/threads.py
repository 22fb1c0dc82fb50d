"""Independent fits on a pool of one-thread workers.

The probe fits are many small products (a few hundred samples), which run fastest on one
thread each: with torch's or BLAS's own threads they spin against each other on a busy
machine. So the work is split where it is independent (layers, families, resamples), each
piece runs single-threaded, and `map_one_thread` spreads the pieces over worker threads (torch,
numpy and BLAS release the GIL). Each piece is the same one-thread computation as in a serial
loop, so the numbers equal the loop's exactly. The process's thread settings are set once around
the pool and restored after it (a library call leaves them as it found them).

Example:
    >>> map_one_thread(lambda v: v * v, [1, 2, 3])
    [1, 4, 9]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import TypeVar

import torch
from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["map_one_thread", "one_thread"]


def map_one_thread(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int | None = None,
    *,
    desc: str | None = None,
    progress: bool | None = None,
    unit: str = "layer",
) -> list[R]:
    """``[fn(item) for item in items]``, each call on one thread, spread over a thread pool.

    Args:
        fn: The work for one item; it must not share mutable state with the other calls.
        items: The items, in the order of the results.
        workers: Threads (default: torch's thread count, the cores it would use).
        desc: Progress bar label.
        progress: Show a progress bar (default: when ``desc`` is given and there are several
            items).
        unit: The progress bar's unit.

    Returns:
        The results in the order of ``items``; the first failing item's exception is raised.

    Example:
        >>> map_one_thread(lambda v: v + 1, range(4), workers=2)
        [1, 2, 3, 4]
    """
    todo = list(items)
    n = max(1, min(len(todo), workers if workers is not None else torch.get_num_threads()))
    show = progress if progress is not None else desc is not None and len(todo) > 1
    bar = tqdm(total=len(todo), desc=desc, disable=not show, unit=unit, leave=False)
    with one_thread(), bar:
        if n == 1:
            out = []
            for item in todo:
                out.append(fn(item))
                bar.update()
            return out
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [pool.submit(fn, item) for item in todo]
            for _ in as_completed(futures):
                bar.update()
            return [f.result() for f in futures]


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch and BLAS on one thread inside; the settings before are restored after.

    Measured on the shared 2-core machine under load: 0.56 ms per probe-solver step on one
    thread, 25 ms on two (threads spinning against each other and the other processes).

    Example:
        >>> before = torch.get_num_threads()
        >>> with one_thread():
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)
