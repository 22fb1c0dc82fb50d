"""Run a model into an `ActivationStore`, window block by block, here or on Dask workers.

Each window block is collected with `mechprobe.activations.collect_units` and written whole
(activations, score-test state, then its done flag), so a killed collection resumes at the first
unfinished block. A block is a whole number of batches, so every forward pass sees the same rows
as in one in-memory `collect_units` call and the stored arrays are bit-identical to it. With a
scheduler address, each block is a task on a dask.distributed worker; a worker loads the model
by name once (`worker_model`) and writes only its block's regions of the store.

Example:
    >>> windows = torch.randint(0, 1000, (10, 6))
    >>> store, resumed = open_store("acts.zarr", model, windows, np.arange(10) % 2,
    ...                             np.arange(10), position=3, layers=[1], batch_size=1)
    >>> collect_to_store(model, store, batch_size=1, progress=False)  # blocks of 8 windows
    [0, 1]
    >>> store.columns("mlp", 1, 0, 256).shape, store.pending_blocks()
    ((10, 256), [])
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mechprobe.activations import collect_units
from mechprobe.errors import MechprobeError
from mechprobe.models.placement import Placement
from mechprobe.store.fit import connect
from mechprobe.store.zarr_store import ActivationStore

if TYPE_CHECKING:
    from mechprobe.models.types import Model

#: Batches per window block (a block is the unit of writing, resuming and distributing).
BLOCK_BATCHES = 8


def open_store(
    url: str,
    model: Model,
    windows: Any,
    labels: np.ndarray,
    positions: np.ndarray,
    *,
    position: int,
    layers: Sequence[int],
    families: Sequence[str] = ("qkv", "mlp"),
    contrasts: Sequence[int] = (1,),
    batch_size: int = 32,
    meta: dict[str, Any] | None = None,
) -> tuple[ActivationStore, bool]:
    """Create the store for these windows, or open it to resume; ``(store, resumed)``.

    The units per family come from one window through the model; blocks hold
    ``BLOCK_BATCHES * batch_size`` windows.

    Example:
        >>> s, resumed = open_store("o.zarr", model, torch.zeros((3, 4), dtype=torch.long),
        ...                         np.array([0, 1, 1]), np.arange(3), position=2, layers=[0])
        >>> s.widths, s.block, resumed
        ({'qkv': 192, 'mlp': 256}, 256, False)
    """
    windows = torch.as_tensor(windows)
    one = collect_units(model, windows[:1], position, layers, families, progress=False)
    return ActivationStore.open_or_create(
        url,
        windows=windows.numpy(),
        labels=np.asarray(labels),
        positions=np.asarray(positions),
        position=position,
        layers=layers,
        widths={fam: int(one[fam].shape[2]) for fam in families},
        block=BLOCK_BATCHES * batch_size,
        contrasts=contrasts,
        model=str(getattr(model, "mechprobe_name", "")),
        meta=meta,
    )


def collect_block(model: Model, store: ActivationStore, b: int, batch_size: int) -> None:
    """Collect window block ``b`` of ``store`` with ``model`` and write it."""
    if store.block % batch_size:
        raise MechprobeError(
            f"the store's blocks of {store.block} windows are not whole batches of {batch_size}"
        )
    rows = store.block_rows(b)
    windows = torch.as_tensor(store.windows(rows))
    families = list(store.widths)
    units = collect_units(
        model,
        windows,
        store.position,
        store.layers,
        families,
        batch_size=batch_size,
        progress=False,
    )
    store.write_block(b, {fam: units[fam].numpy() for fam in families})


def collect_to_store(
    model: Model,
    store: ActivationStore,
    *,
    batch_size: int = 32,
    scheduler: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> list[int]:
    """Collect every block not yet done; return the blocks written, in order.

    Args:
        model: The model (in-process collection); with ``scheduler``, only its name is used.
        store: The store (`open_store`).
        batch_size: Windows per forward pass (divides the store's block).
        scheduler: None: collect here, block by block; ``tcp://HOST:PORT``: one task per
            block on a dask.distributed cluster; each worker loads the model by its name once
            (the store must be writable there: a shared path or an object-store URL). Where
            some workers declare the resource ``GPU`` (``dask worker ... --resources GPU=1``),
            blocks go only to those.
        device: The workers' device (default: the model's own placement and dtype; CUDA where
            they have it, else CPU).
        progress: Show a progress bar (default: more than one block).
    """
    pending = store.pending_blocks()
    show = progress if progress is not None else len(pending) > 1
    if scheduler is None:
        for b in tqdm(pending, desc="collect into store", disable=not show, unit="block"):
            collect_block(model, store, b, batch_size)
        return pending
    name = getattr(model, "mechprobe_name", None)
    if not name:
        raise MechprobeError(
            "distributed collection loads the model by name on the workers; "
            "load it with mechprobe.load_model"
        )
    from distributed import as_completed

    placement = getattr(model, "mechprobe_placement", None)  # the workers load it alike
    if device is not None and placement is not None:
        placement = dataclasses.replace(placement, device=device, device_map=None, n_devices=None)
    with connect(scheduler) as client:
        workers = client.scheduler_info()["workers"].values()
        gpu = any("GPU" in w.get("resources", {}) for w in workers)
        futures = [  # submit, not map: map() takes batch_size for itself
            client.submit(
                collect_shard,
                b,
                store.url,
                name,
                batch_size,
                device,
                placement,
                pure=False,
                resources={"GPU": 1} if gpu else None,
            )
            for b in pending
        ]
        bar = tqdm(total=len(futures), desc="collect on workers", disable=not show, unit="block")
        for future in as_completed(futures):
            future.result()
            bar.update()
        bar.close()
    left = store.pending_blocks()
    if left:
        raise MechprobeError(f"{len(left)} blocks of {store.url} were not written: {left[:5]}")
    return pending


def collect_shard(
    b: int,
    url: str,
    model_name: str,
    batch_size: int,
    device: str | None = None,
    placement: Placement | None = None,
) -> int:
    """A worker's task: collect block ``b`` into the store at ``url``; return ``b``.

    Example:
        >>> s, _ = open_store("w.zarr", model, torch.zeros((2, 3), dtype=torch.long),
        ...                   np.array([0, 1]), np.arange(2), position=1, layers=[0])
        >>> collect_shard(0, "w.zarr", "tiny-gpt2", batch_size=32, device="cpu")
        0
    """
    model = worker_model(model_name, device, placement)
    collect_block(model, ActivationStore.open(url, mode="r+"), b, batch_size)
    return b


@functools.lru_cache(maxsize=1)
def worker_model(name: str, device: str | None = None, placement: Placement | None = None) -> Model:
    """The model ``name``, loaded once per process (a worker keeps it for all its blocks).

    Example:
        >>> worker_model("tiny-gpt2", "cpu") is worker_model("tiny-gpt2", "cpu")
        True
    """
    from mechprobe.models import load_model

    return load_model(name, device=device, placement=placement)
