r"""Labelled positions from a JSONL file (any annotation), and their context windows.

One JSON object per line: ``{"text": "...", "char": 17, "label": "past"}`` (a character
offset into the text) or ``{"text": "...", "token": 5, "label": "past"}`` (a token index of
the text tokenised on its own, without special tokens). Several lines may share a text; each
distinct text is a document. Blank lines are skipped; other keys are ignored. A label is a
non-empty string (an integer label is taken as its decimal string). Labels are numbered
0, 1, ... in order of first appearance in the file.

Example:
    >>> rows = [{"text": "We walked home and we can sing.", "char": c, "label": lab}
    ...         for c, lab in [(2, "past"), (21, "modal"), (11, "other")]]
    >>> _ = Path("l.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    >>> s = label_samples(tok, load_labels("l.jsonl"), pre=1, post=1)
    >>> s.positions.tolist(), s.labels.tolist(), s.names
    ([1, 2, 5], [0, 2, 1], ('past', 'modal', 'other'))
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Int
from torch import Tensor

from mechprobe.corpus.classes import MAX_CLASSES
from mechprobe.corpus.sentences import _char_spans
from mechprobe.corpus.targets import make_windows, tokenize_text
from mechprobe.errors import MechprobeError

if TYPE_CHECKING:
    from mechprobe.models.types import Tokenizer


@dataclass(frozen=True)
class LabelRecord:
    """One labelled position: a text, a character offset or a token index, and a label.

    Attributes:
        line: Line number in the file (from 1).
        text: The document.
        label: The label's name.
        char: Character offset into ``text`` (or None).
        token: Token index into ``text`` tokenised on its own (or None).
    """

    line: int
    text: str
    label: str
    char: int | None = None
    token: int | None = None


def _offset(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise MechprobeError(f"{where}: {key!r} must be an integer, got {value!r}")
    if value < 0:
        raise MechprobeError(f"{where}: {key!r} must be >= 0, got {value}")
    return value


def _record(raw: str, line: int, source: str) -> LabelRecord:
    where = f"{source}: line {line}"
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MechprobeError(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise MechprobeError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("text", "label"):
        if key not in obj:
            raise MechprobeError(f"{where}: missing key {key!r}")
    text, label = obj["text"], obj["label"]
    if not isinstance(text, str) or not text:
        raise MechprobeError(f"{where}: 'text' must be a non-empty string")
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str) or not label:
        raise MechprobeError(f"{where}: 'label' must be a non-empty string, got {label!r}")
    has = [k for k in ("char", "token") if k in obj]
    if len(has) != 1:
        what = "both" if has else "neither"
        raise MechprobeError(f"{where}: give exactly one of 'char' and 'token' ({what} given)")
    value = _offset(obj, has[0], where)
    if has[0] == "char":
        if value >= len(text):
            raise MechprobeError(
                f"{where}: 'char' {value} is out of range: the text has {len(text)} characters"
            )
        return LabelRecord(line, text, label, char=value)
    return LabelRecord(line, text, label, token=value)


def parse_labels(lines: Iterable[str], source: str = "<labels>") -> list[LabelRecord]:
    """Parse JSONL lines into records (see the module docstring for the format).

    Raises:
        MechprobeError: One line naming ``source`` and the line number: bad JSON, a missing
            key, both or neither of ``char`` / ``token``, a negative or out-of-range offset;
            or no records, fewer than two labels or more than `MAX_CLASSES`.

    Example:
        >>> parse_labels(['{"text": "ab", "char": 2, "label": "x"}'])
        Traceback (most recent call last):
        ...
        mechprobe.errors.MechprobeError: <labels>: line 1: 'char' 2 is out of range: ...
    """
    records = [_record(raw, n, source) for n, raw in enumerate(lines, 1) if raw.strip()]
    if not records:
        raise MechprobeError(f"{source}: no labelled positions")
    names = label_names(records)
    if len(names) < 2:
        raise MechprobeError(f"{source}: only the label {names[0]!r}; need at least two labels")
    if len(names) > MAX_CLASSES:
        raise MechprobeError(f"{source}: {len(names)} labels; at most {MAX_CLASSES} are supported")
    return records


def load_labels(path: str | Path) -> list[LabelRecord]:
    r"""Read a JSONL file of labelled positions (UTF-8, a BOM is allowed; or UTF-16).

    Lines end at ``"\n"`` (a ``"\r"`` before it is JSON whitespace): a U+2028 inside a string
    is part of the string. The file is capped like every local input (`mechprobe.corpus.local`).

    Example:
        >>> _ = Path("l.jsonl").write_text('{"text": "It is", "token": 1, "label": "a"}\n'
        ...                                '{"text": "It is", "char": 0, "label": "b"}\n')
        >>> [(r.line, r.token, r.char, r.label) for r in load_labels("l.jsonl")]
        [(1, 1, None, 'a'), (2, None, 0, 'b')]
    """
    from mechprobe.corpus.local import LABELS_MAX_BYTES, decode_text, read_local

    data = read_local(path, "labels file", LABELS_MAX_BYTES)
    raw = decode_text(data, str(path), "labels file")
    # JSONL lines end at "\n" only: U+2028 and the like are valid inside a JSON string
    return parse_labels(raw.split("\n"), str(path))


def label_names(records: Sequence[LabelRecord]) -> tuple[str, ...]:
    """The distinct labels in order of first appearance: label ``k`` is ``names[k]``.

    Example:
        >>> label_names([LabelRecord(1, "a b", "y", 0), LabelRecord(2, "a b", "x", 2)])
        ('y', 'x')
    """
    return tuple(dict.fromkeys(r.label for r in records))


@dataclass(frozen=True)
class LabelledSamples:
    """The windows around labelled positions, in document then text order.

    Attributes:
        windows: ``[n, pre + post + 1]`` token ids; the sample sits at index ``pre``.
        labels: Label of each sample (int8), an index into ``names``.
        names: Label names (order of first appearance in the file).
        documents: Index into ``texts`` of each sample's document (int64).
        positions: Token index of each sample in its document (int64).
        lines: The file line of each sample (int64).
        texts: The distinct texts, in order of first appearance.
        ids: Token ids of each text.
        n_found: Samples kept per label name.
        n_dropped: Samples dropped per label name: fewer than ``pre`` tokens before them or
            ``post`` after them in their text.
    """

    windows: Int[Tensor, "batch pos"]
    labels: np.ndarray
    names: tuple[str, ...]
    documents: np.ndarray
    positions: np.ndarray
    lines: np.ndarray
    texts: list[str]
    ids: list[list[int]]
    n_found: dict[str, int]
    n_dropped: dict[str, int]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _char_to_token(tokenizer: Tokenizer, text: str, ids: list[int], where: str) -> np.ndarray:
    """Token of every character: the first token whose span holds it, else the next token."""
    spans = _char_spans(tokenizer, text, ids)
    if spans is None:
        raise MechprobeError(
            f"{where}: cannot map character offsets to tokens with this tokenizer "
            "(no offset mapping and its decoded prefixes do not rebuild the text); use 'token'"
        )
    n = len(text)
    owner = np.full(n, -1, dtype=np.int64)
    begins = np.full(n + 1, len(ids), dtype=np.int64)
    for t in range(len(spans) - 1, -1, -1):  # backwards: the first token wins
        start, end = spans[t]
        owner[start:end] = t
        begins[min(start, n)] = t
    after = np.minimum.accumulate(begins[::-1])[::-1]  # first token starting at or after c
    gaps = np.flatnonzero(owner < 0)
    owner[gaps] = after[gaps + 1]
    return owner


def _check_every_label_kept(
    names: Sequence[str],
    kept: Sequence[tuple[int, int, int, int]],
    n_dropped: dict[str, int],
    source: str,
    pre: int,
    post: int,
) -> None:
    """Refuse samples in which a label has no sample left (every one outside the context)."""
    have = {k[2] for k in kept}
    lost = [name for k, name in enumerate(names) if k not in have]
    if lost:
        what = ", ".join(f"{name!r} (all {n_dropped[name]})" for name in lost)
        raise MechprobeError(
            f"{source}: no sample left of label {what}: each has fewer than {pre} tokens "
            f"before it or {post} after it in its text; lower --context-pre/--context-post "
            "or label positions further inside the texts"
        )


def label_samples(
    tokenizer: Tokenizer,
    records: Sequence[LabelRecord],
    *,
    pre: int,
    post: int,
    source: str = "<labels>",
) -> LabelledSamples:
    """Tokenise each distinct text and cut the window around each labelled position.

    A character offset maps to the first token whose span holds it (the tokenizer's offset
    mapping, else the spans of decoded prefixes); a character no span covers (whitespace an
    offset mapping leaves out) maps to the next token. A sample with fewer than ``pre`` tokens
    before it or ``post`` after it in its text is dropped and counted in ``n_dropped``.

    Raises:
        MechprobeError: ``pre`` or ``post`` negative, a token index past its text, a character
            past the last token, two lines on the same token of a text (both lines named), no
            sample left, or none left of some label.

    Example:
        >>> recs = [LabelRecord(1, "It is not.", "neg", char=6),
        ...         LabelRecord(2, "It is not.", "aff", token=1)]
        >>> s = label_samples(tok, recs, pre=1, post=1)
        >>> s.windows.tolist(), s.labels.tolist(), s.n_found
        ([[1026, 318, 407], [318, 407, 13]], [1, 0], {'neg': 1, 'aff': 1})
    """
    if pre < 0 or post < 0:
        raise MechprobeError(f"context-pre and context-post must be >= 0, got {pre} and {post}")
    names = label_names(records)
    label_of = {name: k for k, name in enumerate(names)}
    texts = list(dict.fromkeys(r.text for r in records))
    doc_of = {text: d for d, text in enumerate(texts)}
    ids = [tokenize_text(tokenizer, text) for text in texts]
    owners: dict[int, np.ndarray] = {}
    taken: dict[tuple[int, int], int] = {}
    kept: list[tuple[int, int, int, int]] = []  # (document, position, label, line)
    n_dropped = dict.fromkeys(names, 0)
    for rec in records:
        where = f"{source}: line {rec.line}"
        d = doc_of[rec.text]
        n = len(ids[d])
        if rec.token is not None:
            t = rec.token
            if t >= n:
                raise MechprobeError(f"{where}: token {t} is out of range: the text has {n} tokens")
        else:
            if rec.char is None or not 0 <= rec.char < len(rec.text):
                raise MechprobeError(f"{where}: needs a character offset in the text or a token")
            if d not in owners:
                owners[d] = _char_to_token(tokenizer, rec.text, ids[d], where)
            t = int(owners[d][rec.char])
            if t >= n:
                raise MechprobeError(f"{where}: character {rec.char} lies after the last token")
        if (d, t) in taken:
            raise MechprobeError(
                f"{where}: token {t} of this text is already labelled on line {taken[d, t]}"
            )
        taken[d, t] = rec.line
        if t < pre or t + post >= n:
            n_dropped[rec.label] += 1
            continue
        kept.append((d, t, label_of[rec.label], rec.line))
    if not kept:
        raise MechprobeError(
            f"{source}: no sample left: all {len(records)} have fewer than {pre} tokens "
            f"before them or {post} after them in their text"
        )
    _check_every_label_kept(names, kept, n_dropped, source, pre, post)
    kept.sort()
    doc = np.array([k[0] for k in kept], dtype=np.int64)
    pos = np.array([k[1] for k in kept], dtype=np.int64)
    labels = np.array([k[2] for k in kept], dtype=np.int8)
    offsets = np.cumsum([0] + [len(x) for x in ids])
    flat = [i for x in ids for i in x]
    windows = make_windows(flat, offsets[doc] + pos, pre, post)
    n_found = {name: int((labels == k).sum()) for k, name in enumerate(names)}
    return LabelledSamples(
        windows=windows,
        labels=labels,
        names=names,
        documents=doc,
        positions=pos,
        lines=np.array([k[3] for k in kept], dtype=np.int64),
        texts=texts,
        ids=ids,
        n_found=n_found,
        n_dropped=n_dropped,
    )
