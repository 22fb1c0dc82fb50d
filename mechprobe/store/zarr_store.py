"""`ActivationStore`: activations on disk as zarr v3 arrays, written window block by block.

A store is one zarr v3 group (a local path, or any fsspec URL whose filesystem package is
installed, e.g. ``s3://bucket/run.zarr`` with ``s3fs``). Its attribute ``manifest`` says what
was collected; its arrays are:

* ``acts/<family>/<layer>``: float32 ``[window, unit]``, uncompressed, in shards of one window
  block by all units (one object per block, written whole by one writer) holding chunks of
  ``unit_chunk`` units (so a fit reads a column block across all windows without reading the
  other units);
* ``score/<family>/<layer>``: float64 ``[block, 4 + contrasts, unit]``: each window block's
  streaming score-test state (mean, ``sum (x - mean)^2``, min, max, then per contrast
  ``sum (x - mean)(y - ybar)``; see `mechprobe.stats.score.ScoreAccumulator`), one chunk a block;
* ``windows`` (int32 token ids), ``labels`` (int8), ``positions`` (int64);
* ``checksums``: one sha256 a window block, of its activations and score state, written before
  its done flag and checked when the store is reused (`mechprobe.store.verify`);
* ``done``: one flag a window block, written after the block's other arrays.

A block's regions are disjoint from every other block's, so blocks can be written in any order
by any number of processes; a collection killed midway resumes at the blocks not yet ``done``
and rewrites the one it was writing whole, so the arrays come out identical.

Example:
    >>> store = ActivationStore.create(
    ...     "demo.zarr", windows=np.zeros((5, 3), int), labels=np.array([0, 1, 0, 1, 1]),
    ...     positions=np.arange(5), position=1, layers=[0], widths={"mlp": 4}, block=2)
    >>> store.n_blocks, store.pending_blocks()
    (3, [0, 1, 2])
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from mechprobe.errors import MechprobeError
from mechprobe.faults import failpoint
from mechprobe.store.score_state import block_state, merge_states

FORMAT = "mechprobe-activations/1"
#: A fit task reads about this many bytes of activations (its unit block across all windows).
FIT_BYTES = 1 << 27
#: Bounds of the unit chunk width.
MIN_UNIT_CHUNK, MAX_UNIT_CHUNK = 16, 4096
#: Window blocks of score state read at a time.
SCORE_READ_BLOCKS = 64


def default_unit_chunk(n_windows: int) -> int:
    """Units per chunk: a power of two so that a column block of all windows is ~`FIT_BYTES`.

    Example:
        >>> default_unit_chunk(1_000_000), default_unit_chunk(400)
        (32, 4096)
    """
    width = max(1, FIT_BYTES // (4 * max(n_windows, 1)))
    return int(min(MAX_UNIT_CHUNK, max(MIN_UNIT_CHUNK, 1 << (width.bit_length() - 1))))


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


#: zarr's access modes (``open_group``).
Mode = Literal["r", "r+", "a", "w", "w-"]


def _open_group(url: str, mode: Mode) -> Any:
    import zarr
    from zarr.errors import NodeNotFoundError

    try:
        return zarr.open_group(url, mode=mode, zarr_format=3)
    except (FileNotFoundError, NodeNotFoundError) as exc:
        raise MechprobeError(f"no activation store at {url}") from exc
    except (ImportError, ValueError) as exc:  # e.g. s3:// without s3fs
        raise MechprobeError(f"cannot open the store {url}: {exc}") from exc


class ActivationStore:
    """A zarr v3 store of activations ``[window, unit]`` per (family, layer); see the module.

    Open one with `create`, `open` or `open_or_create`; the properties read the manifest.
    """

    def __init__(self, group: Any, url: str) -> None:
        self.group = group
        #: Where the store is; a local path is made absolute, so that workers find it too.
        self.url = url if "://" in url else os.path.abspath(url)
        self.manifest: dict[str, Any] = dict(group.attrs["manifest"])
        if self.manifest.get("format") != FORMAT:
            raise MechprobeError(f"{url} is not a mechprobe activation store ({FORMAT})")

    # ---------------------------------------------------------------- opening and creating

    @classmethod
    def create(
        cls,
        url: str,
        *,
        windows: np.ndarray,
        labels: np.ndarray,
        positions: np.ndarray,
        position: int,
        layers: Sequence[int],
        widths: Mapping[str, int],
        block: int,
        contrasts: Sequence[int] = (1,),
        unit_chunk: int | None = None,
        model: str = "",
        meta: Mapping[str, Any] | None = None,
    ) -> ActivationStore:
        """Create an empty store (fails if ``url`` already holds one).

        Args:
            url: A local path or an fsspec URL.
            windows: ``[window, length]`` token ids.
            labels: Class index per window.
            positions: Where each sample sits in its document (kept for the record).
            position: Index in the window whose units are stored.
            layers: Layer indices.
            widths: Units per family (``{"qkv": 192, "mlp": 256}``).
            block: Windows per block (the unit of writing and resuming).
            contrasts: The classes whose score tests are accumulated (``y = labels == c``).
            unit_chunk: Units per chunk (default: `default_unit_chunk`).
            model: The model's name (workers load it by this name).
            meta: More manifest entries (not checked on resume).

        Example:
            >>> s = ActivationStore.create("a.zarr", windows=np.zeros((4, 2), int),
            ...     labels=np.array([0, 1, 1, 0]), positions=np.arange(4), position=0,
            ...     layers=[0, 1], widths={"qkv": 6}, block=4, unit_chunk=4)
            >>> s.array("qkv", 1).shape, s.array("qkv", 1).chunks
            ((4, 6), (4, 4))
        """
        n = len(labels)
        if n == 0 or block < 1 or windows.shape[0] != n or len(positions) != n:
            raise MechprobeError(
                "a store needs windows, labels and positions of one length >= 1 and a block >= 1 "
                f"(got {windows.shape[0]}, {n}, {len(positions)}, block {block})"
            )
        settings = dict(
            windows=windows,
            labels=labels,
            position=position,
            layers=layers,
            widths=widths,
            block=block,
            contrasts=contrasts,
            model=model,
        )
        chunk = int(unit_chunk or default_unit_chunk(n))
        manifest = {**cls._manifest_of(**settings), "unit_chunk": chunk, **dict(meta or {})}
        try:
            group = _open_group(url, "w" if _interrupted(url) else "w-")
        except FileExistsError as exc:
            raise MechprobeError(f"{url} already exists") from exc
        group.attrs["creating"] = FORMAT  # a killed creation is recognised and redone
        n_blocks = -(-n // block)
        k = len(manifest["contrasts"])
        for fam, width in manifest["widths"].items():
            shard = -(-width // chunk) * chunk
            for layer in manifest["layers"]:
                group.create_array(
                    f"acts/{fam}/{layer}",
                    shape=(n, width),
                    dtype="float32",
                    chunks=(block, chunk),
                    shards=(block, shard),
                    compressors=None,
                    fill_value=np.nan,
                )
                group.create_array(
                    f"score/{fam}/{layer}",
                    shape=(n_blocks, 4 + k, width),
                    chunks=(1, 4 + k, width),
                    dtype="float64",
                    fill_value=np.nan,
                )
        for name, data, dtype in (
            ("windows", windows, "int32"),
            ("labels", labels, "int8"),
            ("positions", positions, "int64"),
        ):
            data = np.asarray(data).astype(dtype)
            arr = group.create_array(
                name, shape=data.shape, dtype=dtype, chunks=(block, *data.shape[1:])
            )
            arr[...] = data
        group.create_array("done", shape=(n_blocks,), chunks=(1,), dtype="bool", fill_value=False)
        from mechprobe.store.verify import create_checksums

        create_checksums(group, n_blocks)
        group.attrs["manifest"] = manifest  # last: a store without a manifest is incomplete
        return cls(group, url)

    @classmethod
    def open(cls, url: str, mode: Mode = "r") -> ActivationStore:
        """Open an existing store (``mode="r+"`` to write blocks).

        Example:
            >>> _ = ActivationStore.create("b.zarr", windows=np.zeros((2, 1), int),
            ...     labels=np.array([0, 1]), positions=np.arange(2), position=0, layers=[0],
            ...     widths={"mlp": 3}, block=1)
            >>> ActivationStore.open("b.zarr").widths
            {'mlp': 3}
        """
        group = _open_group(url, mode)
        if "manifest" not in group.attrs:
            raise MechprobeError(f"{url} holds no complete activation store (no manifest)")
        return cls(group, url)

    @classmethod
    def open_or_create(cls, url: str, **settings: Any) -> tuple[ActivationStore, bool]:
        """Open the store at ``url`` to resume it, or create it; ``(store, resumed)``.

        A store made for other windows, labels, layers, units or blocks is refused, never
        mixed: the error names what differs. A store resumed is verified first (`verify`):
        a damaged or missing block is collected again.

        Example:
            >>> kw = dict(windows=np.zeros((2, 1), int), labels=np.array([0, 1]),
            ...           positions=np.arange(2), position=0, layers=[0], widths={"mlp": 3},
            ...           block=1)
            >>> [ActivationStore.open_or_create("c.zarr", **kw)[1] for _ in range(2)]
            [False, True]
        """
        if not _exists(url) or _interrupted(url):
            return cls.create(url, **settings), False
        store = cls.open(url, mode="r+")
        want = cls._manifest_of(**settings)
        differ = [k for k, v in want.items() if store.manifest.get(k) != v]
        if differ:
            raise MechprobeError(
                f"the store {url} holds another collection (it differs in {', '.join(differ)}); "
                "remove it or give another path"
            )
        store.verify()
        return store, True

    @staticmethod
    def _manifest_of(**settings: Any) -> dict[str, Any]:
        """What a store holds: the manifest entries that must agree for it to be resumed."""
        return {
            "format": FORMAT,
            "model": settings.get("model", ""),
            "layers": [int(v) for v in settings["layers"]],
            "families": list(settings["widths"]),
            "widths": {k: int(v) for k, v in settings["widths"].items()},
            "position": int(settings["position"]),
            "n_windows": len(settings["labels"]),
            "window_length": int(settings["windows"].shape[1]),
            "block": int(settings["block"]),
            "contrasts": [int(c) for c in settings.get("contrasts", (1,))],
            "windows_sha256": _sha256(np.asarray(settings["windows"], dtype=np.int32)),
            "labels_sha256": _sha256(np.asarray(settings["labels"], dtype=np.int8)),
        }

    # ---------------------------------------------------------------- what it holds

    @property
    def layers(self) -> list[int]:
        """Layer indices, in array order."""
        return list(self.manifest["layers"])

    @property
    def widths(self) -> dict[str, int]:
        """Units per family."""
        return dict(self.manifest["widths"])

    @property
    def n_windows(self) -> int:
        """Number of windows (samples)."""
        return int(self.manifest["n_windows"])

    @property
    def block(self) -> int:
        """Windows per block."""
        return int(self.manifest["block"])

    @property
    def n_blocks(self) -> int:
        """Number of window blocks."""
        return -(-self.n_windows // self.block)

    @property
    def unit_chunk(self) -> int:
        """Units per chunk (a fit task reads whole chunks)."""
        return int(self.manifest["unit_chunk"])

    @property
    def position(self) -> int:
        """Index in the window whose units are stored."""
        return int(self.manifest["position"])

    @property
    def contrasts(self) -> list[int]:
        """Classes with a score test (``y = labels == c``)."""
        return list(self.manifest["contrasts"])

    def block_rows(self, b: int) -> slice:
        """The windows of block ``b``."""
        if not 0 <= b < self.n_blocks:
            raise MechprobeError(f"block {b} is out of range (0..{self.n_blocks - 1})")
        return slice(b * self.block, min((b + 1) * self.block, self.n_windows))

    def array(self, family: str, layer: int) -> Any:
        """The zarr array ``[window, unit]`` of one family and layer."""
        return self.group[f"acts/{family}/{layer}"]

    def columns(self, family: str, layer: int, lo: int, hi: int) -> np.ndarray:
        """Units ``lo:hi`` of every window, float32 ``[window, hi - lo]``."""
        return self.array(family, layer)[:, lo:hi]

    def labels(self) -> np.ndarray:
        """Class index per window (int8)."""
        return self.group["labels"][:]

    def positions(self) -> np.ndarray:
        """Document position per window (int64)."""
        return self.group["positions"][:]

    def windows(self, rows: slice) -> np.ndarray:
        """Token ids of the windows ``rows`` (int64 ``[rows, length]``)."""
        return self.group["windows"][rows].astype(np.int64)

    def done(self) -> np.ndarray:
        """The done flag of every block."""
        return self.group["done"][:]

    def pending_blocks(self) -> list[int]:
        """Blocks not yet written completely, in order."""
        return [int(b) for b in np.flatnonzero(~self.done())]

    # ---------------------------------------------------------------- writing

    def write_block(self, b: int, acts: Mapping[str, np.ndarray]) -> None:
        """Write block ``b``: activations, score-test state, their checksum, then the done flag.

        Args:
            b: Block index.
            acts: ``{family: [rows, layer, unit]}`` for every family, the block's rows.
        """
        rows = self.block_rows(b)
        labels = self.group["labels"][rows]
        ys = [(labels == c).astype(np.int8) for c in self.contrasts]
        digest = hashlib.sha256()
        for fam, width in self.widths.items():
            x = np.asarray(acts[fam], dtype=np.float32)
            if x.shape != (rows.stop - rows.start, len(self.layers), width):
                raise MechprobeError(
                    f"block {b} of {fam}: expected shape "
                    f"{(rows.stop - rows.start, len(self.layers), width)}, "
                    f"got {x.shape}"
                )
            for i, layer in enumerate(self.layers):
                part = np.ascontiguousarray(x[:, i, :])
                state = np.asarray(block_state(x[:, i, :], ys), dtype=np.float64)
                self.array(fam, layer)[rows] = part
                self.group[f"score/{fam}/{layer}"][b] = state
                digest.update(part.tobytes())
                digest.update(np.ascontiguousarray(state).tobytes())
        self.group["checksums"][b] = np.frombuffer(digest.digest(), dtype=np.uint8)
        failpoint(f"store:block{b}")  # crash tests: the block written, not yet marked done
        self.group["done"][b] = True

    # ---------------------------------------------------------------- verifying

    def verify(self, log: Any = None) -> list[int]:
        """Check every done block against its checksum (`mechprobe.store.verify.verify_store`)."""
        from mechprobe.store.verify import verify_store

        return verify_store(self, log)

    # ---------------------------------------------------------------- the score test

    def score(self, family: str, layer: int) -> list[Any]:
        """The score test of every unit, per contrast, merged over the blocks in block order.

        Returns:
            One `mechprobe.stats.score.ScoreResult` (``statistic``, ``pvalue``) per contrast.
        """
        if not self.done().all():
            raise MechprobeError(f"the store {self.url} is incomplete: collect it first")
        labels, arr = self.labels(), self.group[f"score/{family}/{layer}"]

        def blocks() -> Iterator[tuple[np.ndarray, int, list[int]]]:
            for b0 in range(0, self.n_blocks, SCORE_READ_BLOCKS):
                for j, state in enumerate(arr[b0 : b0 + SCORE_READ_BLOCKS]):
                    y = labels[self.block_rows(b0 + j)]
                    yield state, len(y), [int((y == c).sum()) for c in self.contrasts]

        return merge_states(blocks(), len(self.contrasts))


def _existing(url: str) -> Any | None:
    """The zarr group at ``url``, or None where there is none."""
    import zarr
    from zarr.errors import NodeNotFoundError

    try:
        return zarr.open_group(url, mode="r", zarr_format=3)
    except (FileNotFoundError, NodeNotFoundError):
        return None
    except (ImportError, ValueError) as exc:  # e.g. s3:// without s3fs
        raise MechprobeError(f"cannot open the store {url}: {exc}") from exc


def _exists(url: str) -> bool:
    """Whether ``url`` holds a zarr group already."""
    return _existing(url) is not None


def _interrupted(url: str) -> bool:
    """Whether ``url`` holds a store whose creation was killed (marked, no manifest)."""
    group = _existing(url)
    if group is None:
        return False
    return group.attrs.get("creating") == FORMAT and "manifest" not in group.attrs
