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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mechprobe.errors import MechprobeError
from mechprobe.faults import failpoint

FORMAT = "mechprobe-activations/1"
#: A fit task reads about this many bytes of activations (its unit block across all windows).
FIT_BYTES = 1 << 27
#: Bounds of the unit chunk width.
MIN_UNIT_CHUNK, MAX_UNIT_CHUNK = 16, 4096
#: Window blocks of score state merged per read.
SCORE_READ_BLOCKS = 64
#: Score-state rows before the per-contrast cross sums.
STATE_ROWS = ("mean", "m2", "xmin", "xmax")
#: Manifest entries that must agree for a store to be resumed.
IDENTITY = ("format", "model", "layers", "families", "widths", "position", "n_windows",
            "window_length", "block", "contrasts", "windows_sha256", "labels_sha256")  # fmt: skip


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


def _open_group(url: str, mode: str) -> Any:
    import zarr

    try:
        return zarr.open_group(url, mode=mode, zarr_format=3)
    except FileNotFoundError as exc:
        raise MechprobeError(f"no activation store at {url}") from exc
    except (ImportError, ValueError) as exc:  # e.g. s3:// without s3fs
        raise MechprobeError(f"cannot open the store {url}: {exc}") from exc


class ActivationStore:
    """A zarr v3 store of activations ``[window, unit]`` per (family, layer); see the module.

    Open one with `create`, `open` or `open_or_create`; the properties read the manifest.
    """

    def __init__(self, group: Any, url: str) -> None:
        self.group = group
        self.url = url
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
        n = int(len(labels))
        if n == 0 or block < 1 or windows.shape[0] != n or len(positions) != n:
            raise MechprobeError(f"a store needs windows, labels and positions of one length >= 1 "
                                 f"and a block >= 1 (got {windows.shape[0]}, {n}, "
                                 f"{len(positions)}, block {block})")  # fmt: skip
        chunk = int(unit_chunk or default_unit_chunk(n))
        manifest = {
            "format": FORMAT,
            "model": model,
            "layers": [int(v) for v in layers],
            "families": list(widths),
            "widths": {k: int(v) for k, v in widths.items()},
            "position": int(position),
            "n_windows": n,
            "window_length": int(windows.shape[1]),
            "block": int(block),
            "unit_chunk": chunk,
            "contrasts": [int(c) for c in contrasts],
            "windows_sha256": _sha256(np.asarray(windows, dtype=np.int32)),
            "labels_sha256": _sha256(np.asarray(labels, dtype=np.int8)),
            **dict(meta or {}),
        }
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
                group.create_array(f"acts/{fam}/{layer}", shape=(n, width), dtype="float32",
                                   chunks=(block, chunk), shards=(block, shard),
                                   compressors=None, fill_value=np.nan)  # fmt: skip
                group.create_array(f"score/{fam}/{layer}", shape=(n_blocks, 4 + k, width),
                                   chunks=(1, 4 + k, width), dtype="float64",
                                   fill_value=np.nan)  # fmt: skip
        for name, data, dtype in (("windows", windows, "int32"), ("labels", labels, "int8"),
                                  ("positions", positions, "int64")):  # fmt: skip
            data = np.asarray(data).astype(dtype)
            arr = group.create_array(name, shape=data.shape, dtype=dtype,
                                     chunks=(block, *data.shape[1:]))  # fmt: skip
            arr[...] = data
        group.create_array("done", shape=(n_blocks,), chunks=(1,), dtype="bool", fill_value=False)
        group.attrs["manifest"] = manifest  # last: a store without a manifest is incomplete
        return cls(group, url)

    @classmethod
    def open(cls, url: str, mode: str = "r") -> ActivationStore:
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
        mixed: the error names what differs.

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
        differ = [k for k in IDENTITY if store.manifest.get(k) != want.get(k)]
        if differ:
            raise MechprobeError(f"the store {url} holds another collection (it differs in "
                                 f"{', '.join(differ)}); remove it or give another path")  # fmt: skip
        return store, True

    @staticmethod
    def _manifest_of(**settings: Any) -> dict[str, Any]:
        """The identity entries a `create` with these settings would write."""
        return {
            "format": FORMAT,
            "model": settings.get("model", ""),
            "layers": [int(v) for v in settings["layers"]],
            "families": list(settings["widths"]),
            "widths": {k: int(v) for k, v in settings["widths"].items()},
            "position": int(settings["position"]),
            "n_windows": int(len(settings["labels"])),
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
        """Write block ``b``: its activations, their score-test state, then its done flag.

        Args:
            b: Block index.
            acts: ``{family: [rows, layer, unit]}`` for every family, the block's rows.
        """
        rows = self.block_rows(b)
        labels = self.group["labels"][rows]
        ys = [(labels == c).astype(np.int8) for c in self.contrasts]
        for fam, width in self.widths.items():
            x = np.asarray(acts[fam], dtype=np.float32)
            if x.shape != (rows.stop - rows.start, len(self.layers), width):
                raise MechprobeError(f"block {b} of {fam}: expected shape "
                                     f"{(rows.stop - rows.start, len(self.layers), width)}, "
                                     f"got {x.shape}")  # fmt: skip
            for i, layer in enumerate(self.layers):
                self.array(fam, layer)[rows] = np.ascontiguousarray(x[:, i, :])
                self.group[f"score/{fam}/{layer}"][b] = block_state(x[:, i, :], ys)
        failpoint(f"store:block{b}")  # crash tests: the block written, not yet marked done
        self.group["done"][b] = True

    # ---------------------------------------------------------------- the score test

    def score(self, family: str, layer: int) -> list[Any]:
        """The score test of every unit, per contrast, merged over all blocks in block order.

        Returns:
            One `mechprobe.stats.score.ScoreResult` (``statistic``, ``pvalue``) per contrast.

        Raises:
            MechprobeError: If some block is not written yet.
        """
        from mechprobe.stats.score import ScoreAccumulator

        if not self.done().all():
            raise MechprobeError(f"the store {self.url} is incomplete: collect it first")
        labels, arr = self.labels(), self.group[f"score/{family}/{layer}"]
        accs = [ScoreAccumulator() for _ in self.contrasts]
        for b0 in range(0, self.n_blocks, SCORE_READ_BLOCKS):
            states = arr[b0 : b0 + SCORE_READ_BLOCKS]
            for j, state in enumerate(states):
                rows = self.block_rows(b0 + j)
                base = dict(zip(STATE_ROWS, state[:4], strict=True))
                for k, c in enumerate(self.contrasts):
                    n1 = int((labels[rows] == c).sum())
                    part = {"n": np.array([rows.stop - rows.start, n1]), "cxy": state[4 + k]}
                    accs[k].merge(ScoreAccumulator.from_state({**base, **part}))
        return [acc.result() for acc in accs]


def block_state(x: np.ndarray, ys: Sequence[np.ndarray]) -> np.ndarray:
    """One block's score-test state ``[4 + len(ys), units]`` (rows: see `STATE_ROWS`, cxy).

    Example:
        >>> block_state(np.array([[0.0], [2.0]]), [np.array([0, 1])])[:, 0].tolist()
        [1.0, 2.0, 0.0, 2.0, 1.0]
    """
    from mechprobe.stats.score import ScoreAccumulator

    out = np.empty((4 + len(ys), x.shape[1]))
    for k, y in enumerate(ys):
        acc = ScoreAccumulator()
        acc.add(x, y)
        state = acc.state()
        if k == 0:
            out[:4] = [state[name] for name in STATE_ROWS]
        out[4 + k] = state["cxy"]
    return out


def _exists(url: str) -> bool:
    """Whether ``url`` holds a zarr group already."""
    import zarr

    try:
        zarr.open_group(url, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return True


def _interrupted(url: str) -> bool:
    """Whether ``url`` holds a store whose creation was killed (marked, no manifest)."""
    import zarr

    try:
        attrs = zarr.open_group(url, mode="r", zarr_format=3).attrs
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return attrs.get("creating") == FORMAT and "manifest" not in attrs
