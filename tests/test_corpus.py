"""Text sources and the negation/affirmation selection rule (mechprobe.corpus)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mechprobe.corpus import targets as corpus_targets
from mechprobe.corpus import text as corpus_text
from mechprobe.corpus.classes import negation_preset
from mechprobe.corpus.targets import (
    AFFIRMATION,
    NEGATION,
    Targets,
    balance_targets,
    first_per_class,
    make_windows,
)
from mechprobe.corpus.text import load_text
from mechprobe.errors import MechprobeError
from tests.helpers import COURSE_AFF_WORDS, COURSE_NEG_WORDS

pytestmark = pytest.mark.unit

#: The implementation under test: the shipped preset (classes_negation.toml), the course's rule.
PRESET = negation_preset()
classify_token = PRESET.classify


def select_targets(pieces, pre=90, post=10):
    return PRESET.select(pieces, pre, post)


NEG_WORDS = list(COURSE_NEG_WORDS)
AFF_WORDS = list(COURSE_AFF_WORDS)


# ---------------------------------------------------------------- the rule, clause by clause


@pytest.mark.parametrize("word", NEG_WORDS)
def test_negation_words(word):
    assert classify_token(f" {word}", " go") == NEGATION
    assert classify_token(word.upper(), " go") == NEGATION  # lower-cased
    assert classify_token(f"  {word.capitalize()} ", " go") == NEGATION  # stripped


@pytest.mark.parametrize("piece", ["'t", "n't", " can't", "wouldn't", "'T", " won't"])
def test_negation_apostrophe_t(piece):
    assert classify_token(piece, " be") == NEGATION


@pytest.mark.parametrize("piece", [" no", " nothing", " knot", "'s", "t", " notice", "’t"])
def test_not_a_negation(piece):
    # "’t" (typographic apostrophe) is not "'t": the rule is literal
    assert classify_token(piece, " be") is None


@pytest.mark.parametrize("word", AFF_WORDS)
def test_affirmation_words(word):
    assert classify_token(f" {word}", " go") == AFFIRMATION
    assert classify_token(f" {word.upper()}", " go") == AFFIRMATION
    assert classify_token(f" {word}", " not") is None  # "can not" is no affirmation
    assert classify_token(f" {word}", " nothing") == AFFIRMATION  # only exactly " not"
    assert classify_token(f" {word}", " Not") == AFFIRMATION  # case-sensitive comparison


@pytest.mark.parametrize("nxt", [",", ".", "\n", "\r\n", "not", "'t", "", "\t"])
def test_next_token_must_start_with_space(nxt):
    assert classify_token(" not", nxt) is None
    assert classify_token(" can", nxt) is None
    assert classify_token("'t", nxt) is None


def test_other_words_are_ignored():
    for piece in [" cans", " would", " must", " will", " shouldn", " may be", " the"]:
        assert classify_token(piece, " go") is None


def test_negation_takes_precedence_over_next_not():
    # a negation followed by " not" is still a negation ("not not")
    assert classify_token(" never", " not") == NEGATION


# ---------------------------------------------------------------- positions and windows


def _pieces(n: int, at: dict[int, str]) -> list[str]:
    return [at.get(i, " x") for i in range(n)]


def test_window_edges():
    n, pre, post = 12, 3, 2
    # candidates are ti in range(3, 10)
    at = {2: " not", 3: " not", 5: " may", 9: " never", 10: " can"}
    t = select_targets(_pieces(n, at), pre=pre, post=post)
    assert t.positions.tolist() == [3, 5, 9]
    assert t.labels.tolist() == [NEGATION, AFFIRMATION, NEGATION]
    assert t.labels.dtype == np.int8 and t.positions.dtype == np.int64
    # pre=0 makes index 0 a candidate; post=1 makes n-2 the last
    t0 = select_targets(_pieces(4, {0: " not", 2: " can", 3: " can"}), pre=0, post=1)
    assert t0.positions.tolist() == [0, 2]


def test_both_classes_in_text_order():
    pieces = ["A", " we", " can", " go", " but", " don", "'t", " stay", ",", " never", "."]
    pieces += [" x"] * 3
    t = select_targets(pieces, pre=1, post=1)
    # " never" is followed by "." (no space) -> not a target
    assert t.positions.tolist() == [2, 6]
    assert t.labels.tolist() == [AFFIRMATION, NEGATION]


def test_select_rejects_bad_context():
    with pytest.raises(MechprobeError):
        select_targets([" a"] * 5, pre=-1, post=1)
    with pytest.raises(MechprobeError):
        select_targets([" a"] * 5, pre=1, post=0)


def test_make_windows():
    ids = list(range(100, 130))
    pos = np.array([5, 20, 26])
    w = make_windows(ids, pos, pre=5, post=3)
    assert w.shape == (3, 9)
    for row, p in zip(w.tolist(), pos, strict=True):
        assert row == ids[p - 5 : p + 4]
        assert row[5] == ids[p]
    with pytest.raises(MechprobeError):
        make_windows(ids, np.array([27]), pre=5, post=3)
    with pytest.raises(MechprobeError):
        make_windows(ids, np.array([4]), pre=5, post=3)


def test_first_per_class_keeps_text_order():
    labels = np.array([1, 1, 0, 1, 0, 0, 1], dtype=np.int8)
    t = Targets(np.arange(10, 17), labels)
    k = first_per_class(t, 2)
    assert k.positions.tolist() == [10, 11, 12, 14]
    assert k.labels.tolist() == [1, 1, 0, 0]
    assert len(first_per_class(t, 100)) == 7


def test_balance_targets_seeded_subset():
    rng = np.random.default_rng(1)
    labels = (rng.random(50) < 0.7).astype(np.int8)
    t = Targets(np.arange(50) * 3, labels)
    b1, b2 = balance_targets(t, seed=3), balance_targets(t, seed=3)
    n_min = min(t.count(0), t.count(1))
    assert b1.count(0) == b1.count(1) == n_min
    assert np.array_equal(b1.positions, b2.positions)
    assert np.all(np.diff(b1.positions) > 0)  # text order
    assert set(b1.positions) <= set(t.positions)
    # the smaller class is kept whole
    small = 0 if t.count(0) < t.count(1) else 1
    assert np.array_equal(b1.positions[b1.labels == small], t.positions[t.labels == small])
    assert not np.array_equal(balance_targets(t, seed=4).positions, b1.positions)


# ---------------------------------------------------------------- the real text


def test_counts_on_shared_text_match_straightforward_loop(shared_text, tiny_reference):
    _, tok = tiny_reference  # the real GPT-2 tokenizer
    text = shared_text.read_bytes().decode("utf-8", errors="replace")
    src = load_text(str(shared_text))
    assert src.text == text and "\r\n" in src.text and src.text.startswith("The Project")

    # independent, straightforward re-implementation of the course's loop
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    neg, aff = [], []
    for ti in range(90, len(ids) - 10):
        t = tok.decode(ids[ti]).strip().lower()
        nxt = tok.decode(ids[ti + 1])
        if ("'t" in t or "n't" in t or t in NEG_WORDS) and nxt.startswith(" "):
            neg.append(ti)
        if t in AFF_WORDS and nxt != " not" and nxt.startswith(" "):
            aff.append(ti)

    pieces = corpus_targets.decode_pieces(tok, corpus_targets.tokenize_text(tok, src.text))
    got = select_targets(pieces, pre=90, post=10)
    assert got.positions[got.labels == NEGATION].tolist() == neg
    assert got.positions[got.labels == AFFIRMATION].tolist() == aff
    assert len(neg) > 100 and len(aff) > 100


def test_sample_text_has_enough_targets(tiny_reference):
    from mechprobe.data import read_data_text

    _, tok = tiny_reference
    text = read_data_text("sample_negation.txt")
    assert len(text.split()) >= 3000
    pieces = corpus_targets.decode_pieces(tok, corpus_targets.tokenize_text(tok, text))
    t = select_targets(pieces)
    assert t.count(NEGATION) >= 100 and t.count(AFFIRMATION) >= 100


# ---------------------------------------------------------------- text sources


def test_local_file_bytes_kept(tmp_path):
    raw = b"line one\r\nline two \xff end\r\n"
    path = tmp_path / "t.txt"
    path.write_bytes(raw)
    src = load_text(str(path))
    assert src.text == raw.decode("utf-8", errors="replace")
    assert "\r\n" in src.text and "\ufffd" in src.text
    assert src.sha256 == hashlib.sha256(raw).hexdigest()
    assert not src.fallback and src.origin == str(path)


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(MechprobeError, match="cannot read text file"):
        load_text(str(tmp_path / "nope.txt"))
    with pytest.raises(MechprobeError, match="cannot read text file"):
        load_text(str(tmp_path))  # a directory


def test_resolve_source():
    assert corpus_text.resolve_source("gutenberg:42") == (
        "url",
        "https://www.gutenberg.org/cache/epub/42/pg42.txt",
    )
    assert corpus_text.resolve_source("HTTPS://example.org/a.txt")[0] == "url"
    assert corpus_text.resolve_source("data/a.txt") == ("path", None)
    with pytest.raises(MechprobeError):
        corpus_text.resolve_source("gutenberg:abc")


def test_env_variable_names_default_text(tmp_path, monkeypatch):
    path = tmp_path / "env.txt"
    path.write_bytes(b"from the environment")
    monkeypatch.setenv(corpus_text.TEXT_ENV, str(path))
    src = load_text(None)
    assert src.text == "from the environment" and src.source == str(path)
    assert load_text(str(path)).sha256 == src.sha256


@pytest.mark.unit
def test_a_failed_default_download_falls_back_once_per_run(monkeypatch, capsys):
    calls = []

    def fail(url, **kwargs):
        calls.append(url)
        raise MechprobeError(f"could not download {url}: no network")

    monkeypatch.delenv(corpus_text.TEXT_ENV, raising=False)
    monkeypatch.setattr(corpus_text, "cached_download", fail)
    monkeypatch.setattr(corpus_text, "_FELL_BACK", set())
    first, second = load_text(), load_text()
    assert first.fallback and second.fallback and first.sha256 == second.sha256
    assert first.origin == "mechprobe/data/sample_negation.txt"
    assert len(calls) == 1  # the second call neither retries nor warns again
    assert capsys.readouterr().err.count("falling back to the built-in sample text") == 1
    with pytest.raises(MechprobeError, match="could not download"):
        load_text("gutenberg:32154")  # a source given explicitly never falls back
