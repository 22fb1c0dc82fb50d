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

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class ProbeData:
    """The data of a probe, read once: documents and classes, or labelled positions.

    Attributes:
        documents: The texts (one `TextSource` per document; no window crosses documents).
        classes: The class rules; None with ``labels``.
        labels: Labelled positions (`mechprobe.corpus.labels.LabelRecord` list), instead.
        sha256: ``{name: sha256}`` of each input, for the manifest.
        describe: What the data is, for the summary (sources, hashes, the class source).
    """

    documents: tuple[Any, ...] = ()
    classes: Any = None
    labels: list[Any] | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    describe: dict[str, Any] = field(default_factory=dict)


def documents_sha256(documents: Sequence[Any]) -> str:
    """One sha256 for several documents: a single document's own, else the hash of theirs.

    Example:
        >>> from mechprobe.corpus.text import text_source
        >>> documents_sha256([text_source("a")]) == text_source("a").sha256
        True
    """
    if len(documents) == 1:
        return str(documents[0].sha256)
    return hashlib.sha256("\n".join(d.sha256 for d in documents).encode()).hexdigest()


def probe_data(
    documents: Sequence[Any], classes: Any, classes_sha256: str, classes_source: str
) -> ProbeData:
    """A `ProbeData` of documents and a class set, with its hashes and description.

    Example:
        >>> from mechprobe.corpus.classes import negation_preset
        >>> from mechprobe.corpus.text import text_source
        >>> d = probe_data([text_source("It is not.")], negation_preset(), "ab", "preset")
        >>> sorted(d.sha256), d.describe["classes"]
        (['classes', 'text'], 'preset')
    """
    docs = tuple(documents)
    if len(docs) == 1:
        describe = dict(docs[0].describe())
    else:
        describe = {
            "source": f"{len(docs)} documents",
            "sha256": documents_sha256(docs),
            "documents": [d.describe() for d in docs],
            "fallback": any(d.fallback for d in docs),
            "n_chars": sum(len(d.text) for d in docs),
        }
    return ProbeData(
        docs,
        classes,
        sha256={"text": documents_sha256(docs), "classes": classes_sha256},
        describe={**describe, "classes": classes_source},
    )


def load_probe_data(config: Any) -> ProbeData:
    """The data a probe config names (the CLI's reading: paths, URLs, ``gutenberg:ID``).

    A bad class file or a missing text fails here, before the model is loaded.
    """
    from mechprobe.corpus.text import load_text, text_source

    if config.labels:
        from mechprobe.corpus.labels import load_labels

        sha = _file_sha256(config.labels)
        return ProbeData(
            labels=load_labels(config.labels),
            sha256={"labels": sha},
            describe={"labels": config.labels},
        )
    from mechprobe.corpus.classes import load_classes, negation_preset

    if config.classes:
        classes, sha = load_classes(config.classes), _file_sha256(config.classes)
    else:
        classes, sha = negation_preset(), text_source(_preset_text()).sha256
    text = load_text(config.text, max_bytes=int(config.max_download_mb * 2**20))
    return probe_data([text], classes, sha, config.classes or "negation preset")


def _file_sha256(path: str) -> str:
    from mechprobe.errors import MechprobeError
    from mechprobe.io import sha256_file

    try:
        return sha256_file(path)
    except OSError as exc:
        raise MechprobeError(f"cannot read {path}: {exc.strerror}") from exc


def _preset_text() -> str:
    from mechprobe.data import read_data_text

    return read_data_text("classes_negation.toml")


def take_samples(config: Any, tokenizer: Any, data: ProbeData | None = None) -> ProbeSamples:
    """The samples a probe asks for: classes on documents, or labelled positions.

    Args:
        config: The probe's settings (contexts, ``max_samples``, ``balance``, ``unit``).
        tokenizer: The model's tokenizer.
        data: The data, read once (`load_probe_data`); None: read what ``config`` names.
    """
    from mechprobe.corpus.targets import Targets, balance_targets, first_per_class

    data = load_probe_data(config) if data is None else data
    pre, post = config.context_pre, config.context_post
    if data.labels is not None:
        from mechprobe.corpus.labels import label_samples

        source = str(data.describe.get("labels", "<labels>"))
        s = label_samples(tokenizer, data.labels, pre=pre, post=post, source=source)
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
            {"labels": source, "lines": len(s)},
        )
    from mechprobe.corpus.targets import prepare_samples

    cs = prepare_samples(
        tokenizer,
        [d.text for d in data.documents],
        pre=pre,
        post=post,
        max_samples=config.max_samples,
        balance=config.balance,
        seed=config.seed,
        classes=data.classes,
        unit=config.unit,
        word_token=config.word_token,
    )
    return ProbeSamples(
        cs.windows,
        cs.targets.labels,
        data.classes.names,
        cs.positions,
        cs.documents,
        cs.word_types,
        cs.n_found,
        len(cs.ids),
        dict(data.describe),
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
