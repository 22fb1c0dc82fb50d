"""Verify a reused `ActivationStore`: every block against the sha256 written with it.

`ActivationStore.write_block` records, before a block's done flag, the sha256 of the block's
activations and score-test state in the ``checksums`` array (one row of 32 bytes a block).
`verify_store` recomputes it from what the store holds when the store is reused: a block whose
values changed, whose chunk is missing (it reads as the fill value) or cannot be decoded (a
truncated shard) is marked not done and its chunk objects are deleted, so that the next
`mechprobe.collect_store.collect_to_store` collects it again; one line says which blocks. The
cost: the whole store is read once (sha256, ~1.5 GB/s a core) each time it is reused.

Example:
    >>> from mechprobe.store import ActivationStore
    >>> store = ActivationStore.create("v.zarr", windows=np.zeros((4, 1), int),
    ...     labels=np.array([0, 1, 0, 1]), positions=np.arange(4), position=0, layers=[0],
    ...     widths={"mlp": 3}, block=2)
    >>> for b in range(2):
    ...     store.write_block(b, {"mlp": np.ones((2, 1, 3))})
    >>> verify_store(store)
    []
    >>> store.array("mlp", 0)[0, 0] = 7.0  # a value changed behind the store's back
    >>> verify_store(store, log=print)
    [store] ...: 1 of 2 blocks damaged or missing, ... (blocks [0]): collecting them again
    [0]
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mechprobe.errors import MechprobeError

if TYPE_CHECKING:  # pragma: no cover
    from mechprobe.store.zarr_store import ActivationStore

__all__ = ["CHECKSUMS", "block_digest", "create_checksums", "verify_store"]

#: The array of per-block sha256 digests (of the block's activations and score state).
CHECKSUMS = "checksums"


def create_checksums(group: Any, n_blocks: int) -> None:
    """The ``checksums`` array: one sha256 (32 bytes) a block, zero until it is written."""
    group.create_array(CHECKSUMS, shape=(n_blocks, 32), chunks=(1, 32), dtype="uint8", fill_value=0)


def block_digest(store: ActivationStore, b: int) -> bytes:
    """The sha256 of block ``b`` as stored: every (family, layer)'s activations and state.

    Raises:
        Exception: Whatever zarr raises for a chunk it cannot decode (a truncated shard).
    """
    rows, digest = store.block_rows(b), hashlib.sha256()
    for fam in store.widths:
        for layer in store.layers:
            part = np.ascontiguousarray(store.array(fam, layer)[rows], dtype=np.float32)
            state = store.group[f"score/{fam}/{layer}"][b]
            digest.update(part.tobytes())
            digest.update(np.ascontiguousarray(state, dtype=np.float64).tobytes())
    return digest.digest()


def verify_store(store: ActivationStore, log: Callable[[str], None] | None = None) -> list[int]:
    """Check every done block against its checksum; mark a bad one not done; return them.

    A store from before checksums has every block collected again. The stored windows and
    labels must match the manifest's sha256, else the store is refused.

    Args:
        store: The store, opened for writing.
        log: Where the line goes (default: stderr).

    Raises:
        MechprobeError: The stored windows or labels differ from the manifest (one line).
    """
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    _check_inputs(store)
    if CHECKSUMS not in set(store.group.array_keys()):
        create_checksums(store.group, store.n_blocks)
        bad = [int(b) for b in np.flatnonzero(store.done())]
        why = "written before block checksums"
    else:
        bad, why = _damaged(store), "damaged or missing, their data differ from the checksums"
    if bad:
        store.group["done"][np.asarray(bad)] = False
        for b in bad:
            _clear_block(store, b)
        say(
            f"[store] {store.url}: {len(bad)} of {store.n_blocks} blocks {why} "
            f"(blocks {bad[:8]}{', ...' if len(bad) > 8 else ''}): collecting them again"
        )
    return bad


def _check_inputs(store: ActivationStore) -> None:
    """Refuse a store whose stored windows or labels differ from the manifest's sha256."""
    for name, dtype in (("windows", np.int32), ("labels", np.int8)):
        data = np.ascontiguousarray(np.asarray(store.group[name][...], dtype=dtype))
        if hashlib.sha256(data.tobytes()).hexdigest() != store.manifest.get(f"{name}_sha256"):
            raise MechprobeError(
                f"{store.url}: the store's {name} differ from their checksum (damaged); "
                "remove it or give another path"
            )


def _damaged(store: ActivationStore) -> list[int]:
    sums, bad = store.group[CHECKSUMS][...], []
    for b in np.flatnonzero(store.done()):
        try:
            same = block_digest(store, int(b)) == bytes(sums[b])
        except Exception:  # a chunk zarr cannot decode (e.g. a truncated shard)
            same = False
        if not same:
            bad.append(int(b))
    return bad


def _clear_block(store: ActivationStore, b: int) -> None:
    """Delete block ``b``'s chunk objects: a damaged shard is written anew, not merged."""
    from zarr.core.sync import sync

    for fam in store.widths:
        for layer in store.layers:
            for arr in (store.array(fam, layer), store.group[f"score/{fam}/{layer}"]):
                n_cols = -(-arr.shape[-1] // (arr.shards or arr.chunks)[-1])
                for j in range(n_cols):
                    coords = (b, j) if arr.ndim == 2 else (b, 0, j)
                    sync((arr.store_path / arr.metadata.encode_chunk_key(coords)).delete())
