"""The samples of a probe: a class file applied to a text, or labelled positions.

Example:
    >>> from mechprobe.experiments.probe import ProbeConfig
    >>> from pathlib import Path
    >>> _ = Path("t.txt").write_text("It is not so, and we can go. " * 50, encoding="utf-8")
    >>> s = take_samples(ProbeConfig(text="t.txt", context_pre=4, context_post=2), tok)
    >>> s.names, s.windows.shape[1]
    (('affirmation', 'negation'), 7)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ProbeSamples:
    """The samples of a probe: windows, labels, where they sit, their word types.

    Attributes:
        windows: ``[n, pre + post + 1]`` token ids; the sample sits at index ``pre``.
        labels: Class index per sample (int8).
        names: Class names, in label order.
        positions: Token position of each sample in its document.
        documents: Document index of each sample (0 for a single text).
        word_types: The stripped, lower-cased token (or word) text of each sample.
        n_found: Samples found per class before subsampling.
        n_tokens: Tokens read.
        source: A description of the data (text source and sha256, or the labels file).
    """

    windows: Any
    labels: np.ndarray
    names: tuple[str, ...]
    positions: np.ndarray
    documents: np.ndarray
    word_types: list[str]
    n_found: dict[str, int]
    n_tokens: int
    source: dict[str, Any]


def take_samples(config: Any, tokenizer: Any) -> ProbeSamples:
    """The samples a probe config asks for: a class file on a text, or labelled positions."""
    from mechprobe.corpus.targets import Targets, balance_targets, first_per_class

    pre, post = config.context_pre, config.context_post
    if config.labels:
        from mechprobe.corpus.labels import label_samples, load_labels

        s = label_samples(
            tokenizer, load_labels(config.labels), pre=pre, post=post, source=config.labels
        )
        targets = Targets(np.arange(len(s)), s.labels)
        classes = range(len(s.names))
        if config.max_samples is not None:
            targets = first_per_class(targets, config.max_samples, classes)
        if config.balance:
            targets = balance_targets(targets, config.seed, classes)
        rows = targets.positions
        types = [tokenizer.decode([int(t)]).strip().lower() for t in s.windows[rows, pre]]
        return ProbeSamples(
            s.windows[rows],
            s.labels[rows],
            s.names,
            s.positions[rows],
            s.documents[rows],
            types,
            s.n_found,
            sum(len(i) for i in s.ids),
            {"labels": config.labels, "lines": len(s)},
        )
    from mechprobe.corpus.classes import load_classes, negation_preset, word_types
    from mechprobe.corpus.targets import prepare_samples
    from mechprobe.corpus.text import load_text

    source = load_text(config.text, max_bytes=int(config.max_download_mb * 2**20))
    classes = load_classes(config.classes) if config.classes else negation_preset()
    s = prepare_samples(
        tokenizer,
        source.text,
        pre=pre,
        post=post,
        max_samples=config.max_samples,
        balance=config.balance,
        seed=config.seed,
        classes=classes,
        unit=config.unit,
        word_token=config.word_token,
    )
    types = word_types(s.pieces, s.targets.positions, unit=config.unit)
    return ProbeSamples(
        s.windows,
        s.targets.labels,
        classes.names,
        s.targets.positions,
        np.zeros(len(s.targets), dtype=np.int64),
        types,
        s.n_found,
        len(s.ids),
        {**source.describe(), "classes": config.classes or "negation preset"},
    )


def contrasts(names: tuple[str, ...], labels: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Binary problems: the second class against the first, or each class against the rest.

    Example:
        >>> [n for n, _ in contrasts(("a", "b"), np.array([0, 1]))]
        ['b']
        >>> [y.tolist() for _, y in contrasts(("a", "b", "c"), np.array([0, 1, 2]))]
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    """
    if len(names) == 2:
        return [(names[1], (labels == 1).astype(np.int8))]
    return [(name, (labels == k).astype(np.int8)) for k, name in enumerate(names)]


def examples(tokenizer: Any, samples: ProbeSamples, pre: int, n: int = 3, width: int = 15) -> dict:
    """The course's example contexts: the first ``n`` samples of each class, in context.

    ``width`` tokens either side, the sample marked ``[[ ]]``.

    Example:
        >>> s = ProbeSamples(torch.tensor([[464, 3797, 318, 407]]), np.array([0]), ("a", "b"),
        ...                  np.array([2]), np.array([0]), ["is"], {}, 4, {})
        >>> examples(tok, s, pre=2)
        {'a': ['The cat[[ is]] not'], 'b': []}
    """
    out = {}
    for k, name in enumerate(samples.names):
        texts = []
        for r in np.flatnonzero(samples.labels == k)[:n]:
            w = samples.windows[r].tolist()
            before = tokenizer.decode(w[max(0, pre - width) : pre])
            after = tokenizer.decode(w[pre + 1 : pre + 1 + width])
            texts.append(f"{before}[[{tokenizer.decode([w[pre]])}]]{after}")
        out[name] = texts
    return out
