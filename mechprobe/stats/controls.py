"""Controls for probes: a word-type control task, a label shuffle, and selectivity.

A probe that predicts the label well may only have learnt which word is at the position: in the
negation experiment the label is a function of the target word ("not" is negation, "can"
affirmation), so a unit that encodes word identity scores highly without encoding negation.
Hewitt and Liang (2019, "Designing and Interpreting Probes with Control Tasks") compare with a
*control task*: every word type gets a random class, so a probe can only do well on it by
encoding word identity. *Selectivity* is the real task's held-out accuracy minus the control
task's: near 0 for a unit that encodes the words and not the property, large for one that
encodes the property beyond the words.

`control_task_labels` draws the control labels, `shuffled_labels` a label-shuffle baseline (no
structure at all), `selectivity` the difference, and `probe_selectivity` runs the held-out
evaluation (`mechprobe.stats.heldout.heldout_eval`) for real and control labels on the same folds.

Example:
    >>> types = np.array(["not", "not", "never", "can", "can", "may"])
    >>> control_task_labels(types, np.array([1, 1, 1, 0, 0, 0]), seed=0).tolist()
    [1, 1, 1, 0, 0, 1]
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Shaped

from mechprobe.errors import MechprobeError
from mechprobe.validate import check_seed

__all__ = ["control_task_labels", "probe_selectivity", "selectivity", "shuffled_labels"]


def control_task_labels(
    word_types: Shaped[np.ndarray, " samples"] | list,
    labels: Shaped[np.ndarray, " samples"],
    seed: int = 0,
) -> Shaped[np.ndarray, " samples"]:
    """Control-task labels: one random class per word type, with the real class sizes kept.

    Assignment: the distinct word types (``np.unique``) are put in a random order (a seeded
    permutation); each in turn goes to the class with the largest remaining deficit (its real
    number of samples minus the samples already given to it), ties going to the first class in a
    seeded random order of the classes. Every sample then gets its type's class.

    All samples of a type share a label, and every class ends within the largest type's count
    of its real size: a class only receives a type while its deficit is the largest and so
    positive, hence it overshoots by less than one type; and a class cannot end short by a
    whole largest type either: every type would then have gone to a class whose deficit was at
    least that large, no class would end over its size, and the deficits (which sum to 0) could
    not. The classes are the distinct values of ``labels``; a class may receive no type when a
    single type outnumbers it.

    Args:
        word_types: The word type of each sample (e.g. the decoded token text); any values
            ``np.unique`` can sort.
        labels: The real label of each sample (any number of classes).
        seed: Seed of the type order and tie-breaking.

    Returns:
        The control label of each sample, with ``labels``' dtype.

    Example:
        >>> types = ["a", "a", "b", "c", "c", "d"]
        >>> y = control_task_labels(types, np.array([0, 0, 0, 1, 1, 1]), seed=3)
        >>> y.tolist(), np.bincount(y).tolist()  # sizes within 2 (the largest type) of 3
        ([1, 1, 1, 0, 0, 1], [2, 4])
    """
    seed = check_seed(seed)
    t, y = _types_and_labels(word_types, labels)
    types, type_of, type_size = np.unique(t, return_inverse=True, return_counts=True)
    classes, class_size = np.unique(y, return_counts=True)
    rng = np.random.default_rng(seed)
    type_order = rng.permutation(types.size)
    class_order = rng.permutation(classes.size)  # tie-breaking order
    deficit = class_size[class_order].astype(np.int64)
    type_class = np.empty(types.size, dtype=np.int64)
    for ti in type_order:
        c = int(np.argmax(deficit))  # first maximum: ties by the random class order
        type_class[ti] = class_order[c]
        deficit[c] -= type_size[ti]
    return classes[type_class[type_of.reshape(-1)]]


def shuffled_labels(
    labels: Shaped[np.ndarray, " samples"], seed: int = 0
) -> Shaped[np.ndarray, " samples"]:
    """A label-shuffle baseline: the labels under a seeded random permutation of the samples.

    ``np.random.default_rng(seed).permutation(labels)``: class sizes are kept exactly and every
    relation between the labels and the samples (word types included) is broken.

    Example:
        >>> y = shuffled_labels(np.array([0, 0, 0, 1, 1]), seed=0)
        >>> sorted(y.tolist())
        [0, 0, 0, 1, 1]
    """
    seed = check_seed(seed)
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    return np.random.default_rng(seed).permutation(y)


def selectivity(
    real_accuracy: Float[np.ndarray, "..."] | float,
    control_accuracy: Float[np.ndarray, "..."] | float,
) -> Float[np.ndarray, "..."]:
    """Selectivity: real-task minus control-task held-out accuracy, elementwise.

    Typically per layer (or per unit). Both accuracies must come from the same folds and the
    same samples, so that only the labels differ. NaN where either accuracy is NaN (a failed
    fit is not counted as 0); shapes broadcast as in numpy.

    Example:
        >>> selectivity(np.array([0.9, 0.7, np.nan]), np.array([0.6, 0.7, 0.5])).round(2).tolist()
        [0.3, 0.0, nan]
    """
    real = np.asarray(real_accuracy, dtype=np.float64)
    control = np.asarray(control_accuracy, dtype=np.float64)
    return real - control


def probe_selectivity(
    x: Float[np.ndarray, "samples units"] | Float[torch.Tensor, "samples units"],
    labels: Shaped[np.ndarray, " samples"],
    word_types: Shaped[np.ndarray, " samples"] | list,
    folds: Shaped[np.ndarray, " samples"],
    *,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Held-out accuracy per unit for the real labels, the control task and a shuffle.

    All three use the same ``folds`` (e.g. `mechprobe.stats.heldout.grouped_folds` on the real
    labels), so they differ only in the labels. The control task and the shuffle must be binary
    like the real labels, and each training split must hold both of their classes.

    Returns:
        ``real``, ``control``, ``shuffled`` (held-out accuracy ``[units]``), ``selectivity``
        (real minus control, ``[units]``) and ``control_labels`` ``[samples]``.

    Raises:
        MechprobeError: If a training split lacks a class of the control or shuffled labels.

    Example:
        >>> y = np.array([0, 1] * 20)
        >>> types = np.where(y == 1, "not", "can")  # two types: the control is the same split
        >>> x = np.stack([y + 0.1 * np.arange(40) % 0.5, np.zeros(40)], axis=1)
        >>> res = probe_selectivity(x, y, types, (np.arange(40) // 2) % 4)
        >>> res["real"].tolist(), res["selectivity"].tolist()
        ([1.0, 0.5], [0.0, 0.0])
    """
    from mechprobe.stats.heldout import heldout_eval

    control = control_task_labels(word_types, labels, seed)
    shuffled = shuffled_labels(labels, seed)
    real_acc = heldout_eval(x, labels, folds).accuracy
    control_acc = heldout_eval(x, control, folds).accuracy
    shuffled_acc = heldout_eval(x, shuffled, folds).accuracy
    return {
        "real": real_acc,
        "control": control_acc,
        "shuffled": shuffled_acc,
        "selectivity": selectivity(real_acc, control_acc),
        "control_labels": control,
    }


def _types_and_labels(word_types: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(word_types)
    y = np.asarray(labels)
    if y.ndim != 1 or t.shape != y.shape:
        raise ValueError(f"word_types {t.shape} and labels {y.shape} must be 1-D of equal length")
    if y.size == 0:
        raise MechprobeError("no samples: the control task needs at least one word type")
    return t, y
