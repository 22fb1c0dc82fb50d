"""Minimal pairs for activation patching: read, validate and tokenise them.

A pair is ``{"clean": ..., "corrupt": ..., "answer": " X", "wrong": " Y"}`` with an optional
``"template"`` (the cluster the bootstrap resamples). Pairs come from a JSONL file (one object a
line), a list of dicts, or a built-in set by name (`BUILTIN`: ``ioi``, ``negation``, shipped in
``mechprobe/data/pairs_<name>.jsonl``). `tokenise_pairs` checks what patching needs: clean and
corrupt of each pair tokenise to the same length, and the answer and the wrong answer are one
token each; anything else is a one-line `MechprobeError` naming the pair.

Example:
    >>> pairs = load_pairs("ioi")
    >>> len(pairs) >= 100, sorted(pairs[0])
    (True, ['answer', 'clean', 'corrupt', 'template', 'wrong'])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mechprobe.errors import MechprobeError

#: The built-in pair sets, by name: their data file in ``mechprobe/data``.
BUILTIN = {"ioi": "pairs_ioi.jsonl", "negation": "pairs_negation.jsonl"}
REQUIRED = ("clean", "corrupt", "answer", "wrong")


def _check(pair: Any, where: str) -> dict[str, str]:
    if not isinstance(pair, Mapping):
        raise MechprobeError(f"{where}: expected an object with {', '.join(REQUIRED)}")
    missing = [k for k in REQUIRED if not isinstance(pair.get(k), str) or not pair.get(k)]
    if missing:
        raise MechprobeError(f"{where}: missing or empty {', '.join(missing)}")
    out = {k: str(pair[k]) for k in REQUIRED}
    if pair.get("template") is not None:
        out["template"] = str(pair["template"])
    return out


def load_pairs(source: str | Path | Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The pairs of a built-in set name, a JSONL file, or a list of dicts, validated.

    Raises:
        MechprobeError: One line naming the file and line (or pair index) of a bad pair.

    Example:
        >>> load_pairs([{"clean": "a b", "corrupt": "a c", "answer": " x", "wrong": " y"}])[0]
        {'clean': 'a b', 'corrupt': 'a c', 'answer': ' x', 'wrong': ' y'}
    """
    if isinstance(source, (str, Path)):
        if str(source) in BUILTIN:
            from mechprobe.data import read_data_text

            text, where = read_data_text(BUILTIN[str(source)]), f"pairs {source}"
        else:
            path = Path(source)
            if not path.is_file():
                names = ", ".join(BUILTIN)
                raise MechprobeError(f"{path}: no such pair file (built-in sets: {names})")
            text, where = path.read_text(encoding="utf-8"), str(path)
        pairs = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MechprobeError(f"{where}:{i}: not JSON ({e.msg})") from None
            pairs.append(_check(obj, f"{where}:{i}"))
    else:
        pairs = [_check(p, f"pair {i}") for i, p in enumerate(source)]
    if not pairs:
        raise MechprobeError("no pairs given")
    return pairs


def pairs_sha256(pairs: Sequence[Mapping[str, str]]) -> str:
    """The sha256 of the pairs as canonical JSON lines (the manifest's input hash).

    Example:
        >>> len(pairs_sha256(load_pairs("ioi")))
        64
    """
    text = "\n".join(json.dumps(dict(p), sort_keys=True) for p in pairs)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class TokenisedPairs:
    """The pairs as token ids.

    Attributes:
        clean: Per pair, the clean prompt's ids (BOS first where the model prepends one).
        corrupt: Per pair, the corrupt prompt's ids (same length as clean).
        answer: ``[pair]`` answer token ids.
        wrong: ``[pair]`` wrong-answer token ids.
        template: ``[pair]`` template index (cluster) into ``templates``.
        templates: Template names (``[""]`` when none were given).
    """

    clean: list[list[int]]
    corrupt: list[list[int]]
    answer: np.ndarray
    wrong: np.ndarray
    template: np.ndarray
    templates: list[str]

    @property
    def lengths(self) -> np.ndarray:
        """``[pair]`` token lengths."""
        return np.array([len(c) for c in self.clean])


def tokenise_pairs(model: Any, pairs: Sequence[Mapping[str, str]]) -> TokenisedPairs:
    """Tokenise every pair with the model's tokenizer, checking lengths and single tokens.

    Prompts get the model's BOS as TransformerLens's ``to_tokens`` does.

    Raises:
        MechprobeError: ``pair i: clean and corrupt tokenise to different lengths (12 vs 13)``,
            or that the answer/wrong answer is not one token.

    Example:
        >>> tp = tokenise_pairs(model, load_pairs("ioi")[:2])
        >>> len(tp.clean[0]) == len(tp.corrupt[0]), tp.answer.shape
        (True, (2,))
    """
    tok = model.tokenizer
    clean, corrupt, answer, wrong, template = [], [], [], [], []
    names: dict[str, int] = {}
    for i, p in enumerate(pairs):
        a = model.to_tokens(p["clean"])[0].tolist()
        b = model.to_tokens(p["corrupt"])[0].tolist()
        if len(a) != len(b):
            raise MechprobeError(
                f"pair {i}: clean and corrupt tokenise to different lengths ({len(a)} vs "
                f"{len(b)} tokens): {p['clean']!r} / {p['corrupt']!r}"
            )
        ids = {}
        for key in ("answer", "wrong"):
            t = tok(p[key], add_special_tokens=False).input_ids
            if len(t) != 1:
                raise MechprobeError(
                    f"pair {i}: {key} {p[key]!r} is {len(t)} tokens; it must be exactly one"
                )
            ids[key] = t[0]
        clean.append(a)
        corrupt.append(b)
        answer.append(ids["answer"])
        wrong.append(ids["wrong"])
        template.append(names.setdefault(p.get("template", ""), len(names)))
    return TokenisedPairs(
        clean, corrupt, np.array(answer), np.array(wrong), np.array(template), list(names)
    )
