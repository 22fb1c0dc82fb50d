"""A target word located in sentences: tokenised batches with target / non-target positions.

Example:
    >>> enc = encode_sentences(tok, ["He gave her a book.", "They told her."], " her")
    >>> enc.target_index.tolist(), enc.nontarget_index.tolist()
    ([2, 2], [1, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Int

from mechprobe.errors import MechprobeError

if TYPE_CHECKING:
    from mechprobe.models.types import Tokenizer


@dataclass
class EncodedSentences:
    """A right-padded batch of sentences and the target / non-target index of each.

    Attributes:
        tokens: ``[batch, pos]`` token ids, right-padded, no BOS.
        lengths: Tokens per sentence before padding.
        target_index: Index of the target (last token of its first occurrence).
        nontarget_index: The token right before the target's first token.
        target_ids: The target's token ids on its own.
        fallback_rows: Sentences where the target was located by character offsets because its
            tokens differ in context.
    """

    tokens: Int[torch.Tensor, "batch pos"]
    lengths: np.ndarray
    target_index: np.ndarray
    nontarget_index: np.ndarray
    target_ids: list[int]
    fallback_rows: list[int] = field(default_factory=list)


def default_sentences() -> list[str]:
    """The shipped sentences, each containing " her" once.

    Example:
        >>> len(default_sentences())
        54
    """
    from mechprobe.data import read_data_text

    return [s for s in read_data_text("sentences_her.txt").splitlines() if s.strip()]


def read_sentences(path: str | Path) -> list[str]:
    """Read one sentence per line (blank lines skipped); a user error if unreadable or empty.

    Example:
        >>> _ = Path("sentences.txt").write_text("She gave her brother the keys.")
        >>> read_sentences("sentences.txt")[:1]
        ['She gave her brother the keys.']
    """
    from mechprobe.corpus.local import decode_text, read_local

    text = decode_text(read_local(path, "sentences file"), str(path), "sentences file")
    lines = [s.rstrip("\r") for s in text.splitlines() if s.strip()]
    if not lines:
        raise MechprobeError(f"sentences file {str(path)!r} has no sentences")
    return lines


def _short(sentence: str, width: int = 70) -> str:
    return repr(sentence if len(sentence) <= width else sentence[: width - 3] + "...")


def _char_spans(
    tokenizer: Tokenizer, sentence: str, ids: list[int]
) -> list[tuple[int, int]] | None:
    """Character span of every token: offset mapping if the tokenizer has one, else decoding."""
    try:
        enc = tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)
        spans = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
        if len(spans) == len(ids):
            return spans
    except (NotImplementedError, TypeError, KeyError, ValueError):
        pass
    spans, start = [], 0
    for t in range(len(ids)):
        end = len(tokenizer.decode(ids[: t + 1]))
        spans.append((start, end))
        start = end
    return spans if start == len(sentence) else None


def locate_target(
    tokenizer: Tokenizer, sentence: str, target: str, target_ids: list[int]
) -> tuple[int, int] | None:
    """First and last token index of the target's first occurrence in ``sentence``, or None.

    The target's own token ids are matched as a subsequence; when they do not occur (the target
    tokenises differently in context), the first character occurrence of ``target`` is used and
    the tokens overlapping it are returned.

    Example:
        >>> ids = tok(" her", add_special_tokens=False).input_ids
        >>> locate_target(tok, "He gave her a book.", " her", ids)
        (2, 2)
    """
    ids = list(tokenizer(sentence, add_special_tokens=False).input_ids)
    k = len(target_ids)
    for i in range(len(ids) - k + 1):
        if ids[i : i + k] == target_ids:
            return i, i + k - 1
    c = sentence.find(target)
    if c < 0:
        return None
    spans = _char_spans(tokenizer, sentence, ids)
    if spans is None:
        return None
    hits = [t for t, (s, e) in enumerate(spans) if s < c + len(target) and e > c]
    return (hits[0], hits[-1]) if hits else None


def encode_sentences(
    tokenizer: Tokenizer, sentences: Sequence[str], target: str
) -> EncodedSentences:
    """Tokenise sentences as a right-padded batch (no BOS) and find target / non-target.

    The target index is the last token of the target's first occurrence (the only token for a
    single-token target); the non-target is the token right before the target's first token.
    Padding uses the tokenizer's pad id (else its EOS id, else 0); the models are causal, so the
    positions before the padding are unaffected by it.

    Raises:
        MechprobeError: A sentence without the target, or with the target as its first token.

    Example:
        >>> enc = encode_sentences(tok, ["He gave her a book."], " her")
        >>> enc.target_index, enc.nontarget_index
        (array([2]), array([1]))
    """
    if not sentences:
        raise MechprobeError("no sentences given")
    if not target:
        raise MechprobeError("the target must not be empty")
    target_ids = list(tokenizer(target, add_special_tokens=False).input_ids)
    if not target_ids:
        raise MechprobeError(f"the target {target!r} has no tokens")
    rows, tidx, nidx, fallback = [], [], [], []
    for n, sentence in enumerate(sentences):
        ids = list(tokenizer(sentence, add_special_tokens=False).input_ids)
        found = locate_target(tokenizer, sentence, target, target_ids)
        if found is None:
            raise MechprobeError(
                f"sentence {n + 1} does not contain the target {target!r}: {_short(sentence)}"
            )
        first, last = found
        if ids[first : last + 1] != target_ids:
            fallback.append(n)
        if first == 0:
            raise MechprobeError(
                f"the target {target!r} starts sentence {n + 1} ({_short(sentence)}), so no "
                "token comes before it for the non-target"
            )
        rows.append(ids)
        tidx.append(last)
        nidx.append(first - 1)
    pad = tokenizer.pad_token_id
    pad = tokenizer.eos_token_id if pad is None else pad
    pad = 0 if pad is None else int(pad)
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    return EncodedSentences(
        tokens=tokens,
        lengths=np.array([len(r) for r in rows]),
        target_index=np.array(tidx, dtype=np.int64),
        nontarget_index=np.array(nidx, dtype=np.int64),
        target_ids=target_ids,
        fallback_rows=fallback,
    )
