"""Target tokens and their context windows: cutting, subsampling, the samples of a text.

The class rules themselves live in `mechprobe.corpus.classes` (the course's negation rule is its
shipped preset, ``classes_negation.toml``); this module cuts the windows around the targets a
rule selects, subsamples them per class and tokenizes the documents.

Example:
    >>> make_windows(list(range(10)), np.array([3, 6]), pre=1, post=1).tolist()
    [[2, 3, 4], [5, 6, 7]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mechprobe.errors import MechprobeError

if TYPE_CHECKING:
    from mechprobe.corpus.classes import ClassSet
    from mechprobe.models.types import Tokenizer

#: Label of an affirmation target.
AFFIRMATION = 0
#: Label of a negation target.
NEGATION = 1


def tokenize_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of the whole text: no BOS or other special tokens, no length warning.

    Example:
        >>> tokenize_text(model.tokenizer, "It is not.")  # doctest: +SKIP
        [1026, 318, 407, 13]
    """
    try:
        enc = tokenizer(text, add_special_tokens=False, verbose=False)
    except TypeError:  # a tokenizer without the verbose flag
        enc = tokenizer(text, add_special_tokens=False)
    return list(enc["input_ids"])


def decode_pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """Decode every token on its own: ``[tokenizer.decode([i]) for i in ids]``.

    Example:
        >>> decode_pieces(model.tokenizer, [1026, 318, 407])  # doctest: +SKIP
        ['It', ' is', ' not']
    """
    return [tokenizer.decode([int(i)]) for i in ids]


@dataclass(frozen=True)
class Targets:
    """Target token positions and labels, in text order.

    Attributes:
        positions: Index of each target in the tokenized text (int64).
        labels: ``AFFIRMATION`` (0) or ``NEGATION`` (1) per target (int8); with a class set,
            the class's index.
    """

    positions: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def count(self, label: int) -> int:
        """How many targets carry ``label``.

        Example:
            >>> Targets(np.array([3, 5]), np.array([1, 0], dtype=np.int8)).count(NEGATION)
            1
        """
        return int((self.labels == label).sum())

    def take(self, index: np.ndarray) -> Targets:
        """The targets at ``index`` (an index array or boolean mask), order preserved."""
        return Targets(self.positions[index], self.labels[index])


def first_per_class(
    targets: Targets, n: int, classes: Sequence[int] = (AFFIRMATION, NEGATION)
) -> Targets:
    """Keep the first ``n`` targets of each class (labels ``classes``), in text order.

    Example:
        >>> t = Targets(np.arange(5), np.array([1, 1, 0, 1, 0], dtype=np.int8))
        >>> first_per_class(t, 1).positions.tolist()
        [0, 2]
    """
    if n < 1:
        raise MechprobeError(f"max-samples must be at least 1, got {n}")
    keep = np.zeros(len(targets), dtype=bool)
    for label in classes:
        keep[np.flatnonzero(targets.labels == label)[:n]] = True
    return targets.take(keep)


def balance_targets(
    targets: Targets, seed: int = 0, classes: Sequence[int] = (AFFIRMATION, NEGATION)
) -> Targets:
    """Subsample every class of ``classes`` (without replacement, seeded) to the smallest's size.

    The kept targets stay in text order; targets of labels outside ``classes`` are dropped.

    Example:
        >>> t = Targets(np.arange(5), np.array([1, 1, 0, 1, 0], dtype=np.int8))
        >>> balance_targets(t, seed=0).count(NEGATION)
        2
    """
    n = min(targets.count(label) for label in classes)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(targets), dtype=bool)
    for label in classes:
        idx = np.flatnonzero(targets.labels == label)
        keep[rng.choice(idx, size=n, replace=False) if len(idx) > n else idx] = True
    return targets.take(keep)


def make_windows(
    ids: Sequence[int], positions: np.ndarray, pre: int, post: int
) -> Int[Tensor, "batch pos"]:
    """Windows ``ids[ti - pre : ti + post + 1]`` around each target (target at index ``pre``).

    Example:
        >>> make_windows(list(range(10)), np.array([3]), pre=2, post=1).tolist()
        [[1, 2, 3, 4]]
    """
    ids_t = torch.as_tensor(list(ids), dtype=torch.long)
    pos = torch.as_tensor(np.asarray(positions), dtype=torch.long)
    if pos.numel() and (int(pos.min()) < pre or int(pos.max()) + post >= ids_t.numel()):
        raise MechprobeError("a target's window runs past the text")
    offsets = torch.arange(-pre, post + 1)
    return ids_t[pos[:, None] + offsets[None, :]]


@dataclass(frozen=True)
class Samples:
    """The tokenized documents, their targets and the targets' windows.

    Attributes:
        ids: Token ids of every document, one after the other.
        pieces: Each token decoded on its own.
        targets: The targets used (after ``max_samples`` / ``balance``); positions index
            ``ids``.
        n_found: Targets found per class name before subsampling (``{"affirmation": ...,
            "negation": ...}`` for the course's rule), in label order.
        windows: ``[n, pre + post + 1]`` token ids; the target sits at index ``pre``. No window
            crosses from one document into the next.
        documents: The document of each target (0 for a single text).
        positions: Each target's token position in its own document.
        word_types: The stripped, lower-cased text of each target's token (or word).
    """

    ids: list[int]
    pieces: list[str]
    targets: Targets
    n_found: dict[str, int]
    windows: Int[Tensor, "batch pos"]
    documents: np.ndarray
    positions: np.ndarray
    word_types: list[str]


def prepare_samples(
    tokenizer: Tokenizer,
    text: str | Sequence[str],
    *,
    pre: int,
    post: int,
    max_samples: int | None = None,
    balance: bool = False,
    seed: int = 0,
    classes: ClassSet | None = None,
    unit: str = "token",
    word_token: str = "first",
) -> Samples:
    """Tokenize ``text``, select targets (``classes``, the course's rule by default), cut windows.

    Raises:
        MechprobeError: Text too short for one window, or no target of a class.

    Args:
        tokenizer: The model's tokenizer.
        text: The whole text, or several documents (no window crosses from one to the next;
            a document too short for one window is passed over).
        pre: Tokens of context before a target.
        post: Tokens after a target.
        max_samples: Keep the first N targets of each class (text order).
        balance: Subsample every class to the size of the smallest (seeded).
        seed: Seed of ``balance``.
        classes: A class set (:mod:`mechprobe.corpus.classes`); None: its negation preset, the
            course's rule.
        unit: ``"token"`` or ``"word"``, with ``classes`` (see ``ClassSet.select``).
        word_token: ``"first"`` or ``"last"``: where a word's target sits, with ``classes``.

    Example:
        >>> text = "It is not here, and you can not go. We may go. " * 20
        >>> s = prepare_samples(tok, text, pre=5, post=2)
        >>> s.windows.shape[1], s.n_found
        (8, {'affirmation': 20, 'negation': 39})
        >>> two = prepare_samples(tok, [text, text], pre=5, post=2)
        >>> two.n_found["negation"], int(two.documents.max()), int(two.positions[-1])
        (78, 1, 297)
        >>> int(s.positions[-1])
        297
    """
    from mechprobe.corpus.classes import negation_preset, word_types

    texts = [text] if isinstance(text, str) else list(text)
    if classes is None:
        classes = negation_preset()
    names = classes.names
    ids: list[int] = []
    pieces: list[str] = []
    found: list[tuple[int, int, Targets, list[str]]] = []  # (document, start, targets, types)
    longest = 0
    for d, doc in enumerate(texts):
        d_ids = tokenize_text(tokenizer, doc)
        longest = max(longest, len(d_ids))
        if len(d_ids) <= pre + post:
            continue
        d_pieces = decode_pieces(tokenizer, d_ids)
        t = classes.select(d_pieces, pre, post, unit=unit, word_token=word_token)
        types = word_types(d_pieces, t.positions.tolist(), unit=unit)
        found.append((d, len(ids), t, types))
        ids += d_ids
        pieces += d_pieces
    if not found:
        what = "text too short" if len(texts) == 1 else "every document is too short"
        raise MechprobeError(
            f"{what}: {longest} tokens, need more than {pre + post} "
            f"(context {pre} before and {post} after a target)"
        )
    targets = Targets(
        np.concatenate([t.positions + start for _, start, t, _ in found]).astype(np.int64),
        np.concatenate([t.labels for _, _, t, _ in found]).astype(np.int8),
    )
    documents = np.concatenate([np.full(len(t), d, dtype=np.int64) for d, _, t, _ in found])
    local = np.concatenate([t.positions for _, _, t, _ in found]).astype(np.int64)
    types_all = [w for *_, types in found for w in types]
    n_found = {name: targets.count(k) for k, name in enumerate(names)}
    missing = [name for name, n in n_found.items() if n == 0]
    if missing:
        found_text = ", ".join(f"{n} {name}" for name, n in n_found.items())
        raise MechprobeError(
            f"no {' or '.join(missing)} targets in the text ({len(ids)} tokens, {found_text}); "
            + ("both classes are needed" if len(names) == 2 else "every class is needed")
        )
    labels = range(len(names))
    keep = Targets(np.arange(len(targets)), targets.labels)
    if max_samples is not None:
        keep = first_per_class(keep, max_samples, labels)
    if balance:
        keep = balance_targets(keep, seed, labels)
    rows = keep.positions
    targets = targets.take(rows)
    windows = make_windows(ids, targets.positions, pre, post)
    return Samples(
        ids,
        pieces,
        targets,
        n_found,
        windows,
        documents[rows],
        local[rows],
        [types_all[int(r)] for r in rows],
    )
