"""Class files (mechprobe.corpus.classes): loading, validation, selection, words, the preset."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mechprobe.corpus import targets as corpus_targets
from mechprobe.corpus.classes import (
    MAX_CLASSES,
    ClassRule,
    classes_from_dict,
    load_classes,
    negation_preset,
    word_spans,
    word_types,
)
from mechprobe.corpus.targets import decode_pieces, prepare_samples, tokenize_text
from mechprobe.errors import MechprobeError
from tests.helpers import COURSE_AFF_WORDS, COURSE_NEG_WORDS

pytestmark = pytest.mark.unit

NEG_WORDS = set(COURSE_NEG_WORDS)
AFF_WORDS = set(COURSE_AFF_WORDS)
PRESET_TOML = """
[[class]]
name = "affirmation"
words = ["agree", "always", "allow", "can", "certainly", "could", "definitely", "may", "might",
         "shall", "should"]
next_not = [" not"]
next_starts_with_space = true
[[class]]
name = "negation"
words = ["not", "cannot", "nor", "never"]
contains = ["'t", "n't"]
next_starts_with_space = true
"""


def course_rule(text: str, nxt: str) -> int | None:
    """The course's rule, written out plainly: 1 negation, 0 affirmation, None."""
    tok = text.strip().lower()
    if not nxt.startswith(" "):
        return None
    if "'t" in tok or "n't" in tok or tok in NEG_WORDS:
        return 1
    if tok in AFF_WORDS and nxt != " not":
        return 0
    return None


def course_targets(pieces, pre, post):
    pos, lab = [], []
    for ti in range(pre, len(pieces) - post):
        label = course_rule(pieces[ti], pieces[ti + 1])
        if label is not None:
            pos.append(ti)
            lab.append(label)
    return pos, lab


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- the preset is the course's rule


def test_preset_file_is_the_course_rule():
    cs = negation_preset()
    assert cs.names == ("affirmation", "negation")
    aff, neg = cs.classes
    assert aff.words == AFF_WORDS and aff.next_not == (" not",) and aff.next_starts_with_space
    assert aff.contains == () and aff.regex is None
    assert neg.words == NEG_WORDS and neg.contains == ("'t", "n't") and neg.next_starts_with_space
    assert neg.next_not == () and neg.regex is None
    assert cs.label("affirmation") == corpus_targets.AFFIRMATION == 0
    assert cs.label("negation") == corpus_targets.NEGATION == 1


def test_preset_equals_toml_written_here(tmp_path):
    here = load_classes(write(tmp_path, "neg.toml", PRESET_TOML))
    assert here.classes == negation_preset().classes


TRICKY = [
    " not", "not", " Not", " NOT", "n't", "'t", "'T", " can", " can't", " CAN", " Can", " may",
    " never", " nor", " cannot", " nothing", " knot", "’t", " should", " always", " x", " y",
    ",", ".", " ", "\n", "\r\n", "\t", "", " not ", "  can", " mayor", " won't", "t", "'s",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_preset_matches_the_course_rule_on_random_pieces(seed):
    rng = np.random.default_rng(seed)
    pieces = [TRICKY[i] for i in rng.integers(0, len(TRICKY), size=int(rng.integers(0, 80)))]
    pre, post = int(rng.integers(0, 6)), int(rng.integers(1, 6))
    got = negation_preset().select(pieces, pre, post)
    pos, lab = course_targets(pieces, pre, post)
    assert got.positions.tolist() == pos
    assert got.labels.tolist() == lab
    assert got.positions.dtype == np.int64 and got.labels.dtype == np.int8


def test_preset_edge_cases():
    cs = negation_preset()
    assert cs.classify(" never", " not") == 1  # negation ignores next_not
    assert cs.classify(" can", " not") is None
    assert cs.classify(" can", " Not") == 0  # next_not is exact and case-sensitive
    assert cs.classify(" not", ".") is None and cs.classify("'t", "") is None
    assert cs.classify("’t", " go") is None  # the rule is literal
    assert len(cs.select([], 0, 1)) == 0 and len(cs.select([" not"], 0, 1)) == 0
    assert cs.select([" not", " x"], 0, 1).positions.tolist() == [0]


@pytest.mark.parametrize(("pre", "post"), [(90, 10), (0, 1), (7, 3)])
def test_preset_on_shared_text(shared_text, tiny_reference, pre, post):
    _, tok = tiny_reference
    text = shared_text.read_bytes().decode("utf-8", errors="replace")
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    got = negation_preset().select(pieces, pre, post)
    pos, lab = course_targets(pieces, pre, post)
    assert got.positions.tolist() == pos and got.labels.tolist() == lab
    assert lab.count(0) > 100 and lab.count(1) > 100


def test_prepare_samples_defaults_to_the_course_rule(tiny_reference):
    from mechprobe.data import read_data_text

    _, tok = tiny_reference
    text = read_data_text("sample_negation.txt")
    pieces = decode_pieces(tok, tokenize_text(tok, text))
    pos, lab = course_targets(pieces, 20, 4)
    s = prepare_samples(tok, text, pre=20, post=4)
    assert s.targets.positions.tolist() == pos and s.targets.labels.tolist() == lab
    assert s.n_found == {"affirmation": lab.count(0), "negation": lab.count(1)}
    firsts = prepare_samples(tok, text, pre=20, post=4, max_samples=30)
    by_class = [[p for p, y in zip(pos, lab, strict=True) if y == k][:30] for k in (0, 1)]
    want = sorted(by_class[0] + by_class[1])
    assert firsts.targets.positions.tolist() == want


def test_prepare_samples_three_classes(tiny_reference):
    _, tok = tiny_reference
    cs = classes_from_dict(
        {
            "class": [
                {"name": "the", "words": ["the"]},
                {"name": "ed", "regex": "[a-z]+ed"},
                {"name": "a", "words": ["a", "an"]},
            ]
        }
    )
    text = "The man walked to a shop and the dog jumped at an owl. " * 10
    s = prepare_samples(tok, text, pre=3, post=2, classes=cs, max_samples=4)
    pieces = decode_pieces(tok, tokenize_text(tok, text))
    want = {0: [], 1: [], 2: []}
    for ti in range(3, len(pieces) - 2):
        t = pieces[ti].strip().lower()
        k = 0 if t == "the" else 1 if re.fullmatch("[a-z]+ed", t) else 2 if t in ("a", "an") else -1
        if k >= 0:
            want[k].append(ti)
    assert s.n_found == {"the": len(want[0]), "ed": len(want[1]), "a": len(want[2])}
    kept = sorted((p, k) for k in want for p in want[k][:4])
    assert list(zip(s.targets.positions.tolist(), s.targets.labels.tolist(), strict=True)) == kept
    with pytest.raises(MechprobeError, match=r"no ed or a targets in the text .* 0 ed, 0 a"):
        prepare_samples(tok, "The man and the owl. " * 10, pre=1, post=1, classes=cs)


# ---------------------------------------------------------------- rules


def test_rule_criteria():
    cs = classes_from_dict(
        {
            "class": [
                {"name": "w", "words": [" Can ", "MAY"]},  # stored stripped and lower-cased
                {"name": "c", "contains": ["XY"]},
                {"name": "r", "regex": "[a-z]+ed"},
            ]
        }
    )
    assert cs.classes[0].words == {"can", "may"} and cs.classes[1].contains == ("xy",)
    assert [
        cs.classify(p, " z") for p in [" can", "MAY", " axyb", " Walked", " walkedx", "ed"]
    ] == [
        0,
        0,
        1,
        2,
        None,
        None,
    ]
    assert cs.classify(" walked!", " z") is None  # fullmatch, not search


def test_next_conditions():
    cs = classes_from_dict(
        {
            "class": [
                {"name": "a", "words": ["a"], "next_not": [" x", ""]},
                {"name": "b", "words": ["b"], "next_starts_with_space": True},
                {"name": "c", "words": ["c"], "next_starts_with_space": False},
            ]
        }
    )
    assert [cs.classify(" a", n) for n in [" x", "", " X", "x", " y"]] == [None, None, 0, 0, 0]
    assert [cs.classify(" b", n) for n in [" y", "y", "\ty", ""]] == [1, None, None, None]
    assert [cs.classify(" c", n) for n in [" y", "y", ""]] == [2, 2, 2]


def test_overlap_names_both_classes_and_position():
    cs = classes_from_dict(
        {"class": [{"name": "past", "regex": ".*ed"}, {"name": "colour", "words": ["red"]}]},
        source="c.toml",
    )
    pieces = [" a", " b", " c", " Red", " d"]
    with pytest.raises(MechprobeError) as exc:
        cs.select(pieces, pre=0, post=1)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("c.toml: ")
    for part in ["'past'", "'colour'", "token 3", "' Red'"]:
        assert part in msg
    # outside the candidate range it is not looked at
    assert len(cs.select(pieces, pre=0, post=2)) == 0
    with pytest.raises(MechprobeError, match="'past' and 'colour'"):
        cs.classify("red", " x")


def test_overlap_only_when_both_next_conditions_hold():
    cs = classes_from_dict(
        {
            "class": [
                {"name": "modal", "words": ["can"], "next_not": [" not"]},
                {"name": "c_n", "regex": "c.n"},
            ]
        }
    )
    assert cs.classify(" can", " not") == 1
    assert cs.classify(" con", " go") == 1
    with pytest.raises(MechprobeError, match="'modal' and 'c_n'"):
        cs.classify(" can", " go")


def test_candidate_range_and_labels_in_file_order():
    words = ["a", "b", "c"]
    cs = classes_from_dict({"class": [{"name": w.upper(), "words": [w]} for w in words]})
    pieces = [" c", " a", " b", " c", " a", " q", " b"]
    t = cs.select(pieces, pre=1, post=2)  # candidates 1..4
    assert t.positions.tolist() == [1, 2, 3, 4] and t.labels.tolist() == [0, 1, 2, 0]
    for bad in [{"pre": -1}, {"post": 0}, {"unit": "char"}, {"unit": "word", "word_token": "mid"}]:
        with pytest.raises(MechprobeError):
            cs.select(pieces, **{"pre": 1, "post": 1, **bad})


def test_class_count_limits():
    def make(n):
        return classes_from_dict(
            {"class": [{"name": f"c{i}", "words": [f"w{i}"]} for i in range(n)]}
        )

    cs = make(MAX_CLASSES)
    t = cs.select([" w0", f" w{MAX_CLASSES - 1}", " x"], pre=0, post=1)
    assert t.labels.tolist() == [0, MAX_CLASSES - 1] and t.labels.dtype == np.int8
    with pytest.raises(MechprobeError, match="need 2 to 128 classes, got 129"):
        make(MAX_CLASSES + 1)
    with pytest.raises(MechprobeError, match="got 1"):
        make(1)


# ---------------------------------------------------------------- files


def test_toml_json_and_unknown_suffix_agree(tmp_path):
    data = {
        "class": [
            {"name": "past", "regex": "[a-z]+ed", "next_starts_with_space": True},
            {"name": "modal", "words": ["can", "may"], "contains": ["'ll"], "next_not": [" not"]},
        ]
    }
    toml = """
[[class]]
name = "past"
regex = "[a-z]+ed"
next_starts_with_space = true

[[class]]
name = "modal"
words = ["can", "may"]
contains = ["'ll"]
next_not = [" not"]
"""
    ref = classes_from_dict(data)
    for name, text in [
        ("c.toml", toml),
        ("c.json", json.dumps(data)),
        ("c.txt", toml),
        ("c.cls", json.dumps(data)),
    ]:
        got = load_classes(write(tmp_path, name, text))
        assert got.classes == ref.classes and got.source.endswith(name)
    assert ref.classes[0] == ClassRule("past", regex="[a-z]+ed", next_starts_with_space=True)


def cls(**kw):
    return {"name": "x", "words": ["x"], **kw}


BAD = [
    ({"class": [cls(), cls(name="y", colour="red")]}, ["class 'y'", "unknown key(s) 'colour'"]),
    ({"class": [cls(), {"words": ["y"]}]}, ["class 2 has no name"]),
    ({"class": [cls(), cls(words=["y"])]}, ["two classes are named 'x'"]),
    ({"class": [cls()]}, ["need 2 to 128 classes, got 1"]),
    ({"class": []}, ["got 0"]),
    ({"classes": [cls()]}, ["unknown top-level key(s) 'classes'"]),
    ({}, ["no list of classes"]),
    ({"class": [cls(), {"name": "y"}]}, ["class 'y' has no 'words', 'contains' or 'regex'"]),
    ({"class": [cls(), {"name": "y", "words": []}]}, ["class 'y' has no 'words'"]),
    ({"class": [cls(), cls(name="y", words=[], regex="(")]}, ["class 'y'", "bad regex '('"]),
    ({"class": [cls(), cls(name="y", words="y")]}, ["class 'y'", "'words' must be a list"]),
    ({"class": [cls(), cls(name="y", words=[1])]}, ["class 'y'", "'words' must be a list"]),
    ({"class": [cls(), cls(name="y", words=[" "])]}, ["class 'y'", "'words' holds an empty"]),
    ({"class": [cls(), cls(name="y", contains=[""])]}, ["'contains' holds an empty"]),
    ({"class": [cls(), cls(name="y", next_not=" not")]}, ["'next_not' must be a list"]),
    ({"class": [cls(), cls(name="y", regex=5)]}, ["'regex' must be a non-empty string"]),
    ({"class": [cls(), cls(name="y", next_starts_with_space="yes")]}, ["must be true or false"]),
    ({"class": [cls(), cls(name=3)]}, ["class 2", "'name' must be a non-empty string"]),
    ({"class": [cls(), "y"]}, ["class 2 is not a table"]),
    ({"class": [cls(), cls(name="y", words=["X"])]}, ["'x' is in both class 'x' and class 'y'"]),
    ([1, 2], ["expected a table"]),
]  # fmt: skip


@pytest.mark.parametrize(("data", "parts"), BAD)
def test_bad_class_files(tmp_path, data, parts):
    path = write(tmp_path, "bad.json", json.dumps(data))
    with pytest.raises(MechprobeError) as exc:
        load_classes(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    for part in parts:
        assert part in msg, (part, msg)


def test_unparsable_and_missing_files(tmp_path):
    with pytest.raises(MechprobeError, match="cannot read classes file"):
        load_classes(tmp_path / "none.toml")
    for name, text, parts in [
        ("a.toml", "[[class]\nname=", ["not valid TOML"]),
        ("a.json", "{'class': 1}", ["not valid JSON"]),
        ("a.txt", "{nope", ["not valid JSON", "not valid TOML"]),
        ("a.toml", '{"class": []}', ["not valid TOML"]),  # the suffix decides
    ]:
        with pytest.raises(MechprobeError) as exc:
            load_classes(write(tmp_path, name, text))
        msg = str(exc.value)
        assert "\n" not in msg and "cannot parse classes file" in msg and name in msg
        for part in parts:
            assert part in msg


def test_toml_without_tomllib_or_tomli(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python 3.10 without tomli
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(MechprobeError, match=r"needs Python 3\.11\+ or the tomli package"):
        load_classes(write(tmp_path, "c.toml", PRESET_TOML))
    data = {"class": [{"name": "a", "words": ["a"]}, {"name": "b", "words": ["b"]}]}
    assert load_classes(write(tmp_path, "c.json", json.dumps(data))).names == ("a", "b")


# ---------------------------------------------------------------- words


@pytest.mark.parametrize(
    ("pieces", "spans"),
    [
        ([" we", " don", "'t", " go"], [(0, 0), (1, 2), (3, 3)]),
        ([" def", "initely", ",", " x"], [(0, 1), (2, 2), (3, 3)]),
        (["Hello", " world", "\n", "\n", "A"], [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]),
        ([" rock", "'", "n", "'", "roll", "."], [(0, 4), (5, 5)]),
        ([" said", " '", "no", "'", "."], [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]),
        ([" no", "'.", " x"], [(0, 0), (1, 1), (2, 2)]),
        ([" dogs", "'", " x"], [(0, 0), (1, 1), (2, 2)]),
        ([" do", "n't", " x"], [(0, 1), (2, 2)]),
        ([" it", "’s", " x"], [(0, 1), (2, 2)]),
        ([" 19", "84", "ab", "_", "c"], [(0, 2), (3, 3), (4, 4)]),
        ([" _", "el", "an", "_."], [(0, 0), (1, 2), (3, 3)]),
        ([" caf", "\ufffd", "\ufffd", " x"], [(0, 0), (1, 1), (2, 2), (3, 3)]),
        (["a", "", "b", "-", "c"], [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]),
        (["'t", "is", " x"], [(0, 1), (2, 2)]),
        ([], []),
    ],
)
def test_word_spans(pieces, spans):
    assert word_spans(pieces) == spans


WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def shared_words(shared_text, tok):
    """The shared text's pieces, word spans, and the words by character span (ours, the regex's)."""
    text = shared_text.read_bytes().decode("utf-8", errors="replace")
    pieces = decode_pieces(tok, tokenize_text(tok, text))
    assert "".join(pieces) == text
    ends = np.cumsum([len(p) for p in pieces])
    starts = ends - [len(p) for p in pieces]
    spans = word_spans(pieces)
    got = {}
    for first, last in spans:
        word = "".join(pieces[first : last + 1])
        if any(c.isalnum() for c in word):
            lead = len(word) - len(word.lstrip())
            got[(int(starts[first]) + lead, int(ends[last]))] = (first, last)
    want = {m.span(): m.group() for m in WORD_RE.finditer(text)}
    return pieces, spans, got, want


def test_word_spans_are_regex_words_on_shared_text(shared_text, tiny_reference):
    """On the (ASCII) shared text, the words are exactly the regex's words."""
    _, spans, got, want = shared_words(shared_text, tiny_reference[1])
    assert set(got) == set(want)
    assert sum(1 for f, la in spans if la > f) > 50  # contractions etc. were joined


@pytest.mark.parametrize("word_token", ["first", "last"])
def test_word_unit_preset_on_shared_text(shared_text, tiny_reference, word_token):
    pieces, spans, got, want = shared_words(shared_text, tiny_reference[1])
    pre, post, n = 90, 10, len(pieces)
    pos, lab = [], []
    for span, word in want.items():  # the course's rule on each regex word
        first, last = got[span]
        ti = first if word_token == "first" else last
        if pre <= ti < n - post and last + 1 < n:
            label = course_rule(word, pieces[last + 1])
            if label is not None:
                pos.append(ti)
                lab.append(label)
    order = np.argsort(pos)
    t = negation_preset().select(pieces, pre, post, unit="word", word_token=word_token)
    assert t.positions.tolist() == np.asarray(pos)[order].tolist()
    assert t.labels.tolist() == np.asarray(lab)[order].tolist()
    # single-token words decide as in token mode
    tok_t = negation_preset().select(pieces, pre, post)
    single = {f for f, la in spans if f == la}
    tok_single = [(p, k) for p, k in zip(tok_t.positions, tok_t.labels, strict=True) if p in single]
    word_single = [(p, k) for p, k in zip(t.positions, t.labels, strict=True) if p in single]
    assert tok_single == word_single and len(tok_single) > 100


def test_word_unit_small():
    cs = negation_preset()
    pieces = [" we", " can", "not", " go", " def", "initely", " go", " don", "'t", "."]
    first = cs.select(pieces, pre=0, post=1, unit="word")
    last = cs.select(pieces, pre=0, post=1, unit="word", word_token="last")
    # "cannot" -> negation; "definitely" -> affirmation; "don't" is followed by "." -> none
    assert first.positions.tolist() == [1, 4] and first.labels.tolist() == [1, 0]
    assert last.positions.tolist() == [2, 5] and last.labels.tolist() == [1, 0]
    # token mode sees "not" + " go" and nothing else
    assert cs.select(pieces, pre=0, post=1).positions.tolist() == [2]
    # the sample's token must lie in range(pre, n - post); a word ending the text is no candidate
    assert cs.select(pieces, pre=2, post=1, unit="word").positions.tolist() == [4]
    assert cs.select(pieces, pre=2, post=1, unit="word", word_token="last").positions.tolist() == [
        2,
        5,
    ]
    assert len(cs.select([" x", " can", "not"], pre=0, post=1, unit="word")) == 0
    # the next-token conditions read the token after the word (" not" / " y"), not "initely"
    assert len(cs.select([" x", " def", "initely", " not", "."], 0, 1, unit="word")) == 0
    t = cs.select([" x", " def", "initely", " y", "."], 0, 1, unit="word")
    assert t.positions.tolist() == [1] and t.labels.tolist() == [0]
    with pytest.raises(MechprobeError, match=r"word ' Red' \(tokens 1..1\)"):
        classes_from_dict(
            {"class": [{"name": "a", "regex": ".*ed"}, {"name": "b", "words": ["red"]}]}
        ).select([" x", " Red", " y"], 0, 1, unit="word")


def test_word_types():
    pieces = [" We", " don", "'t", " Def", "initely", " GO", "."]
    assert word_types(pieces, [0, 2, 3, 6]) == ["we", "'t", "def", "."]
    assert word_types(pieces, [0, 1, 2, 4, 5], unit="word") == [
        "we",
        "don't",
        "don't",
        "definitely",
        "go",
    ]
    assert word_types(pieces, np.array([], dtype=np.int64)) == []
    with pytest.raises(MechprobeError):
        word_types(pieces, [0], unit="char")
