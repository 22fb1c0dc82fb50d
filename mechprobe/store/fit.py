"""Per-unit probes fitted from an `ActivationStore` with Dask, one task per unit block.

Each task opens the store, reads one block of units (whole chunks) across all windows and fits
``label ~ 1 + activation`` for every unit of it with `mechprobe.stats.logistic.fit_logistic`,
for every contrast of the store (and Firth's fit for the separated units, if asked). The same
tasks run on Dask's local threaded scheduler (the default: one process, no cluster) or on a
dask.distributed cluster (``scheduler="tcp://HOST:PORT"``), whose scheduler reruns the tasks of
a worker that dies. A unit's fit does not depend on which other units share its task, so the
results equal, bit for bit, those of one `fit_logistic` call on all the units in memory.

Example:
    >>> from mechprobe.store import ActivationStore
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 40)
    >>> store = ActivationStore.create("f.zarr", windows=np.zeros((40, 1), int), labels=y,
    ...     positions=np.arange(40), position=0, layers=[0], widths={"mlp": 5}, block=16)
    >>> for b in range(store.n_blocks):
    ...     rows = store.block_rows(b)
    ...     store.write_block(b, {"mlp": rng.normal(size=(rows.stop - rows.start, 1, 5))})
    >>> fits = fit_store(store)
    >>> fits["mlp"][0]["beta"].shape  # one dict per contrast; [layer, unit]
    (1, 5)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mechprobe.errors import MechprobeError
from mechprobe.faults import failpoint_once
from mechprobe.store.zarr_store import ActivationStore

#: The fields of a fit, as `mechprobe.stats.probe.fit_layers` gives them, then the extras.
FIELDS = ("beta", "intercept", "pvalue", "accuracy", "converged", "separated")
FLAGS = ("converged", "separated", "fitted")


#: Deadline for the scheduler's handshake, in seconds (it may accept and never answer);
#: ``$MECHPROBE_DASK_CONNECT_S`` overrides it.
CONNECT_TIMEOUT_S = 20.0
#: Deadline for the first worker to join, in seconds; ``$MECHPROBE_DASK_WORKER_WAIT_S`` overrides.
WORKER_WAIT_S = 60.0


def _deadline(env: str, default: float) -> float:
    import os

    raw = os.environ.get(env, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise MechprobeError(f"{env}: expected a number of seconds, got {raw!r}") from None
    if not 0 < value < 1e6:
        raise MechprobeError(f"{env}: expected a positive number of seconds, got {raw!r}")
    return value


def _client(scheduler: str) -> Any:
    """A Client made within `CONNECT_TIMEOUT_S`, in a daemon thread that may be left behind.

    distributed's own ``timeout`` does not bound every step of the handshake: a server that
    accepts the connection and never answers would block the run for ever.
    """
    import threading

    from distributed import Client

    box: dict[str, Any] = {}
    deadline = _deadline("MECHPROBE_DASK_CONNECT_S", CONNECT_TIMEOUT_S)

    def make() -> None:
        try:
            box["client"] = Client(scheduler, timeout=f"{deadline}s")
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=make, name="mechprobe-dask-connect", daemon=True)
    thread.start()
    thread.join(deadline + 2)  # distributed's own error first, where it has one
    if thread.is_alive():
        raise MechprobeError(
            f"{scheduler}: the Dask scheduler did not answer within {deadline:g} s; is a Dask "
            "scheduler listening there (dask scheduler --port PORT)? A slow one: raise "
            "MECHPROBE_DASK_CONNECT_S"
        )
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, OSError | TimeoutError | ValueError):
            raise MechprobeError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
        raise exc
    return box["client"]


@contextlib.contextmanager
def connect(scheduler: str | None) -> Iterator[Any]:
    """A dask.distributed client of the scheduler at ``scheduler``, with a worker; None: None.

    The handshake has a deadline (`CONNECT_TIMEOUT_S`), and so does the wait for the first
    worker (`WORKER_WAIT_S`): each fails in one line with a hint instead of waiting for ever.

    Raises:
        MechprobeError: No distributed, no answer, or no worker in time.

    Example:
        >>> with connect(None) as client:
        ...     client is None
        True
    """
    if scheduler is None:
        yield None
        return
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise MechprobeError("--scheduler needs dask.distributed: pip install distributed") from exc
    wait = _deadline("MECHPROBE_DASK_WORKER_WAIT_S", WORKER_WAIT_S)
    client = _client(scheduler)
    try:
        try:
            client.wait_for_workers(1, timeout=wait)
        except TimeoutError:
            raise MechprobeError(
                f"{scheduler}: no Dask worker joined the scheduler within {wait:g} s; start one "
                f"(dask worker {scheduler}) or raise MECHPROBE_DASK_WORKER_WAIT_S"
            ) from None
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[int]:
    """Set torch to one intra-op thread for the block; yield the count it had.

    Dask's threads are the parallelism: each task's fit then runs single-threaded, and no
    task changes the process-wide setting while others run.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield before
    finally:
        torch.set_num_threads(before)


def compute(tasks: Sequence[Any], scheduler: str | None) -> list[Any]:
    """Compute Dask tasks on the local threaded scheduler (None) or on a cluster."""
    import dask

    if scheduler is None:
        with one_torch_thread() as threads:
            return list(dask.compute(*tasks, scheduler="threads", num_workers=threads))
    with connect(scheduler) as client:
        return list(dask.compute(*tasks, scheduler=client))


def unit_blocks(store: ActivationStore, family: str) -> list[tuple[int, int]]:
    """The ``(lo, hi)`` unit blocks of a family: one chunk each.

    Example:
        >>> s = ActivationStore.create("u.zarr", windows=np.zeros((2, 1), int),
        ...     labels=np.array([0, 1]), positions=np.arange(2), position=0, layers=[0],
        ...     widths={"mlp": 40}, block=2, unit_chunk=16)
        >>> unit_blocks(s, "mlp")
        [(0, 16), (16, 32), (32, 40)]
    """
    width, step = store.widths[family], store.unit_chunk
    return [(lo, min(lo + step, width)) for lo in range(0, width, step)]


def fit_store(
    store: ActivationStore,
    *,
    families: Sequence[str] | None = None,
    select: Mapping[str, np.ndarray] | None = None,
    firth_separated: bool = False,
    scheduler: str | None = None,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Fit every unit (or the selected ones) of every layer from the store, with Dask.

    Args:
        store: A complete store.
        families: Families to fit (default: all).
        select: Optional ``{family: [contrast, layer, unit] bool}``: fit only these units
            (the others get NaN and ``fitted`` False).
        firth_separated: Also fit the separated units with Firth's method.
        scheduler: None: Dask's local threaded scheduler (threads: torch's thread count);
            ``tcp://HOST:PORT``: a dask.distributed cluster (the store must be readable there).

    Returns:
        ``{family: [one dict per contrast]}`` of ``[layer, unit]`` arrays: the fields of
        `mechprobe.stats.probe.fit_layers` (``pvalue`` NaN unless converged), ``fitted`` and,
        with ``firth_separated``, ``firth_beta`` and ``firth_pvalue`` (NaN but where separated).
    """
    import dask

    if not store.done().all():
        raise MechprobeError(f"the store {store.url} is incomplete: collect it first")
    families = list(families or store.widths)
    plan, tasks = [], []
    fit_block_task = dask.delayed(fit_block, pure=False)
    for fam in families:
        for i, layer in enumerate(store.layers):
            for lo, hi in unit_blocks(store, fam):
                sel = None if select is None else np.asarray(select[fam][:, i, lo:hi], bool)
                if sel is not None and not sel.any():
                    continue
                plan.append((fam, i, lo, hi))
                tasks.append(fit_block_task(store.url, fam, layer, lo, hi, sel, firth_separated))
    n_layers, k = len(store.layers), len(store.contrasts)
    out = {
        fam: [_empty(n_layers, store.widths[fam], firth_separated) for _ in range(k)]
        for fam in families
    }
    for (fam, i, lo, hi), parts in zip(plan, compute(tasks, scheduler), strict=True):
        for c, part in enumerate(parts):
            for key, value in part.items():
                out[fam][c][key][i, lo:hi] = value
    return out


def _empty(n_layers: int, width: int, firth: bool) -> dict[str, np.ndarray]:
    keys = [*FIELDS, "fitted", *(("firth_beta", "firth_pvalue") if firth else ())]
    return {
        key: np.zeros((n_layers, width), bool)
        if key in FLAGS
        else np.full((n_layers, width), np.nan)
        for key in keys
    }


def fit_block(
    url: str,
    family: str,
    layer: int,
    lo: int,
    hi: int,
    select: np.ndarray | None = None,
    firth_separated: bool = False,
) -> list[dict[str, np.ndarray]]:
    """One task: fit units ``lo:hi`` of one family and layer, every contrast (see `fit_store`).

    Returns:
        One dict per contrast of ``[hi - lo]`` arrays (the fields of `fit_store`).

    Example:
        >>> s = ActivationStore.create("k.zarr", windows=np.zeros((4, 1), int),
        ...     labels=np.array([0, 1, 0, 1]), positions=np.arange(4), position=0, layers=[0],
        ...     widths={"mlp": 2}, block=4)
        >>> s.write_block(0, {"mlp": np.array([[[0.0, 1]], [[1, 2]], [[2, 0]], [[3, 3]]])})
        >>> part = fit_block("k.zarr", "mlp", 0, 0, 2)[0]  # unit 1 separates the classes
        >>> part["accuracy"].tolist(), part["separated"].tolist()
        ([0.5, 1.0], [False, True])
    """
    import torch

    from mechprobe.stats.firth import fit_firth
    from mechprobe.stats.logistic import fit_logistic

    if torch.get_num_threads() != 1:  # a worker: Dask's threads are the parallelism
        torch.set_num_threads(1)
    failpoint_once("store:fit")
    store = ActivationStore.open(url)
    x, labels = store.columns(family, layer, lo, hi), store.labels()
    out = []
    for c, cls in enumerate(store.contrasts):
        y = (labels == cls).astype(np.int8)
        part = {key: value[0] for key, value in _empty(1, hi - lo, firth_separated).items()}
        cols = np.arange(hi - lo) if select is None else np.flatnonzero(select[c])
        if cols.size:
            xc = x if select is None else np.ascontiguousarray(x[:, cols])
            fit = fit_logistic(xc, y)
            for key in FIELDS:
                part[key][cols] = getattr(fit, key)
            part["pvalue"][cols] = np.where(fit.converged, fit.pvalue, np.nan)
            part["fitted"][cols] = True
            sep = cols[fit.separated]
            if firth_separated and sep.size:
                firth = fit_firth(np.ascontiguousarray(x[:, sep]), y)
                part["firth_beta"][sep], part["firth_pvalue"][sep] = firth.beta, firth.pvalue
        out.append(part)
    return out
