"""Per-block score-test state: computed when a block is written, merged when the test is read.

A block's state is a ``[4 + contrasts, unit]`` float64 array: the mean of ``x``, ``M2 = sum
(x - mean)^2``, the minimum and the maximum of ``x``, then per contrast ``C = sum (x - mean)(y -
ybar)``: the centred sums of `mechprobe.stats.score.ScoreAccumulator`, from which the score test
``S = C^2 / (ybar (1 - ybar) M2)`` of the merged blocks follows (Chan, Golub and LeVeque's pairwise
update). Memory is ``O(units)`` per block, whatever the number of windows.

Example:
    >>> x, y = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1])
    >>> parts = [(block_state(x[:2], [y[:2]]), 2, [0]), (block_state(x[2:], [y[2:]]), 2, [2])]
    >>> float(merge_states(parts, 1)[0].statistic[0])  # 4 r^2 = 4 * 0.8, as in one pass
    3.2
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: The state's rows before the per-contrast cross sums.
STATE_ROWS = ("mean", "m2", "xmin", "xmax")


def block_state(x: np.ndarray, ys: Sequence[np.ndarray]) -> np.ndarray:
    """One block's state ``[4 + len(ys), units]`` for labels ``ys`` (one 0/1 array a contrast).

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


def merge_states(
    blocks: Iterable[tuple[np.ndarray, int, list[int]]], n_contrasts: int
) -> list[Any]:
    """Merge ``(state, n, [n1 per contrast])`` blocks in order; one `ScoreResult` a contrast."""
    from mechprobe.stats.score import ScoreAccumulator

    accs = [ScoreAccumulator() for _ in range(n_contrasts)]
    for state, n, n1s in blocks:
        base = dict(zip(STATE_ROWS, state[:4], strict=True))
        for k, n1 in enumerate(n1s):
            part = {"n": np.array([n, n1]), "cxy": state[4 + k]}
            accs[k].merge(ScoreAccumulator.from_state({**base, **part}))
    return [acc.result() for acc in accs]
