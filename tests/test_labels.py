"""JSONL labelled positions (mechprobe.corpus.labels): loading, char -> token, windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mechprobe.corpus.labels import (
    LabelRecord,
    label_names,
    label_samples,
    load_labels,
    parse_labels,
)
from mechprobe.errors import MechprobeError

pytestmark = pytest.mark.unit

TEXTS = [
    "The old lighthouse keeper did not expect any visitors that winter, so he was surprised.",
    "She could see the small boat from the harbour wall; it wasn't moving at all.",
    "We walked home after the match and talked about nothing in particular for hours.",
    "Nobody knew why the library closed early on Tuesdays, but everyone had a theory.",
]


def write_jsonl(tmp_path, rows, name="l.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# ---------------------------------------------------------------- loading


def test_load_labels_records(tmp_path):
    rows = [
        {"text": "a b c", "char": 2, "label": "x", "note": "ignored"},
        "",
        "   ",
        {"text": "a b c", "token": 0, "label": 7},
        {"text": "d e", "char": 0, "label": "x"},
    ]
    path = tmp_path / "l.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + write_jsonl(tmp_path, rows).read_bytes())  # with a BOM
    recs = load_labels(path)
    assert recs == [
        LabelRecord(1, "a b c", "x", char=2),
        LabelRecord(4, "a b c", "7", token=0),
        LabelRecord(5, "d e", "x", char=0),
    ]
    assert label_names(recs) == ("x", "7")


GOOD = {"text": "abc", "char": 1, "label": "y"}
BAD = [
    ("{nope", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object, got list"),
    ({"char": 1, "label": "x"}, "line 2: missing key 'text'"),
    ({"text": "abc", "char": 1}, "line 2: missing key 'label'"),
    ({"text": "abc", "char": 1, "token": 0, "label": "x"}, "one of 'char' and 'token' (both given"),
    ({"text": "abc", "label": "x"}, "line 2: give exactly one of 'char' and 'token' (neither"),
    ({"text": "abc", "char": -1, "label": "x"}, "line 2: 'char' must be >= 0, got -1"),
    ({"text": "abc", "token": -2, "label": "x"}, "line 2: 'token' must be >= 0, got -2"),
    ({"text": "abc", "char": 3, "label": "x"}, "line 2: 'char' 3 is out of range: the text has 3"),
    ({"text": "abc", "char": True, "label": "x"}, "line 2: 'char' must be an integer"),
    ({"text": "abc", "token": 1.0, "label": "x"}, "line 2: 'token' must be an integer"),
    ({"text": "", "char": 0, "label": "x"}, "line 2: 'text' must be a non-empty string"),
    ({"text": 5, "char": 0, "label": "x"}, "line 2: 'text' must be a non-empty string"),
    ({"text": "abc", "char": 0, "label": ""}, "line 2: 'label' must be a non-empty string"),
    ({"text": "abc", "char": 0, "label": None}, "line 2: 'label' must be a non-empty string"),
    ({"text": "abc", "char": 0, "label": "y"}, "only the label 'y'; need at least two"),
]  # fmt: skip


@pytest.mark.parametrize(("row", "part"), BAD)
def test_bad_label_lines(tmp_path, row, part):
    path = write_jsonl(tmp_path, [GOOD, row])
    with pytest.raises(MechprobeError) as exc:
        load_labels(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and part in msg, msg


def test_empty_unreadable_and_too_many_labels(tmp_path):
    with pytest.raises(MechprobeError, match="no labelled positions"):
        load_labels(write_jsonl(tmp_path, ["", " "]))
    with pytest.raises(MechprobeError, match="cannot read labels file"):
        load_labels(tmp_path / "none.jsonl")
    rows = [json.dumps({"text": "abc", "char": 0, "label": f"l{i}"}) for i in range(129)]
    with pytest.raises(MechprobeError, match="129 labels; at most 128"):
        parse_labels(rows)
    assert len(parse_labels(rows[:128])) == 128


# ---------------------------------------------------------------- samples, computed independently


def prefix_token_of_char(tok, ids, c):
    """The token holding character c, from the lengths of decoded prefixes (ASCII texts)."""
    for t in range(len(ids)):
        if len(tok.decode(ids[:t])) <= c < len(tok.decode(ids[: t + 1])):
            return t
    raise AssertionError(c)


def random_records(tok, seed, n=40):
    rng = np.random.default_rng(seed)
    names = ["past", "modal", "other"]
    recs, used = [], set()
    for line in range(1, n + 1):
        d = int(rng.integers(0, len(TEXTS)))
        text = TEXTS[d]
        ids = tok(text, add_special_tokens=False).input_ids
        label = names[int(rng.integers(0, 3))]
        if rng.random() < 0.5:
            c = int(rng.integers(0, len(text)))
            t = prefix_token_of_char(tok, ids, c)
            rec = LabelRecord(line, text, label, char=c)
        else:
            t = int(rng.integers(0, len(ids)))
            rec = LabelRecord(line, text, label, token=t)
        if (d, t) not in used:
            used.add((d, t))
            recs.append((rec, d, t))
    return recs


@pytest.mark.parametrize(("seed", "pre", "post"), [(0, 3, 2), (1, 0, 0), (2, 6, 1), (3, 1, 5)])
def test_samples_match_independent_computation(tiny_reference, seed, pre, post):
    _, tok = tiny_reference
    recs = random_records(tok, seed)
    s = label_samples(tok, [r for r, _, _ in recs], pre=pre, post=post)

    order = []  # labels and documents by first appearance, written out
    for r, _, _ in recs:
        if r.label not in order:
            order.append(r.label)
    texts = []
    for r, _, _ in recs:
        if r.text not in texts:
            texts.append(r.text)
    want, dropped = [], dict.fromkeys(order, 0)
    for r, _, t in recs:
        ids = tok(r.text, add_special_tokens=False).input_ids
        if t - pre < 0 or t + post > len(ids) - 1:
            dropped[r.label] += 1
            continue
        want.append(
            (texts.index(r.text), t, order.index(r.label), r.line, ids[t - pre : t + post + 1])
        )
    want.sort()
    assert s.names == tuple(order) and s.texts == texts
    assert s.documents.tolist() == [w[0] for w in want]
    assert s.positions.tolist() == [w[1] for w in want]
    assert s.labels.tolist() == [w[2] for w in want] and s.labels.dtype == np.int8
    assert s.lines.tolist() == [w[3] for w in want]
    assert s.windows.tolist() == [w[4] for w in want]
    assert s.windows.shape == (len(want), pre + post + 1) and len(s) == len(want)
    assert s.n_dropped == dropped
    assert s.n_found == {k: sum(1 for w in want if w[2] == i) for i, k in enumerate(order)}
    assert s.ids == [tok(t, add_special_tokens=False).input_ids for t in texts]
    if pre + post > 0:
        assert sum(dropped.values()) > 0  # the edges were exercised


class NoOffsets:
    """The GPT-2 tokenizer without offset mappings: the decoded-prefix spans are used."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return self.tok(text, add_special_tokens=add_special_tokens)

    def decode(self, ids):
        return self.tok.decode(ids)


class TrimmedOffsets(NoOffsets):
    """Offsets that leave out leading spaces (as some tokenizers' do)."""

    def __call__(self, text, add_special_tokens=False, verbose=False, return_offsets_mapping=False):
        enc = dict(self.tok(text, add_special_tokens=add_special_tokens))
        if return_offsets_mapping:
            spans = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
            enc["offset_mapping"] = [
                (s + 1, e) if text[s] == " " and e > s + 1 else (s, e)
                for s, e in spans["offset_mapping"]
            ]
        return enc


def test_char_mapping_without_offsets_and_with_gaps(tiny_reference):
    _, tok = tiny_reference
    recs, want = [], []
    for d, text in enumerate(TEXTS[:2]):
        ids = tok(text, add_special_tokens=False).input_ids
        for t in range(len(ids)):
            start, end = len(tok.decode(ids[:t])), len(tok.decode(ids[: t + 1]))
            c = start if t % 2 else end - 1  # the first char is a leading space for " word"
            recs.append(LabelRecord(len(recs) + 1, text, f"l{t % 3}", char=c))
            want.append((d, t))
    assert sum(r.text[r.char] == " " for r in recs) > 5
    for wrapped in (tok, NoOffsets(tok), TrimmedOffsets(tok)):
        got = label_samples(wrapped, recs, pre=0, post=0)
        assert list(zip(got.documents.tolist(), got.positions.tolist(), strict=True)) == want
        assert got.lines.tolist() == list(range(1, len(recs) + 1))
    # the space of " not" and its "n" are the same token, whichever offsets are used
    text = TEXTS[0]
    c = text.index(" not")
    recs = [LabelRecord(1, text, "a", char=c), LabelRecord(2, text, "b", char=c + 1)]
    for wrapped in (tok, NoOffsets(tok), TrimmedOffsets(tok)):
        with pytest.raises(
            MechprobeError, match="line 2: token 5 of this text is already labelled on line 1"
        ):
            label_samples(wrapped, recs, pre=0, post=0)


def test_multibyte_character_maps_to_its_first_token(tiny_reference):
    _, tok = tiny_reference
    text = "a 😀 b c d"
    ids = tok(text, add_special_tokens=False).input_ids
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[:3] == ["a", " \ufffd", "\ufffd"]  # the emoji is split over tokens 1 and 2
    recs = [LabelRecord(1, text, "x", char=2), LabelRecord(2, text, "y", char=5)]
    s = label_samples(tok, recs, pre=0, post=0)
    assert s.positions.tolist() == [1, 4] and pieces[4] == " c"


def test_sample_errors(tiny_reference):
    _, tok = tiny_reference
    text = TEXTS[0]
    n = len(tok(text, add_special_tokens=False).input_ids)
    with pytest.raises(MechprobeError, match=f"f.jsonl: line 3: token {n} is out of range: "):
        label_samples(
            tok,
            [LabelRecord(1, text, "a", token=0), LabelRecord(3, text, "b", token=n)],
            pre=0,
            post=0,
            source="f.jsonl",
        )
    with pytest.raises(MechprobeError, match="line 9: token 2 of this text is already labelled"):
        label_samples(
            tok,
            [LabelRecord(4, text, "a", token=2), LabelRecord(9, text, "a", token=2)],
            pre=0,
            post=0,
        )
    with pytest.raises(MechprobeError, match="no sample left: all 2 have fewer than 3 tokens"):
        label_samples(
            tok,
            [LabelRecord(1, text, "a", token=1), LabelRecord(2, "Hi there", "b", char=0)],
            pre=3,
            post=0,
        )
    with pytest.raises(MechprobeError, match="must be >= 0"):
        label_samples(tok, [LabelRecord(1, text, "a", token=1)], pre=-1, post=0)
    # the same token of two different texts is fine
    s = label_samples(
        tok,
        [LabelRecord(1, text, "a", token=2), LabelRecord(2, TEXTS[1], "b", token=2)],
        pre=1,
        post=1,
    )
    assert s.documents.tolist() == [0, 1] and s.positions.tolist() == [2, 2]


def test_load_then_samples(tmp_path, tiny_reference):
    _, tok = tiny_reference
    text = TEXTS[2]
    rows = [
        {"text": text, "char": text.index("walked") , "label": "past"},
        {"text": text, "char": text.index("talked") + 3, "label": "past"},
        {"text": text, "char": text.index(" match"), "label": "noun"},
        {"text": TEXTS[3], "token": 3, "label": "noun"},
    ]  # fmt: skip
    s = label_samples(tok, load_labels(write_jsonl(tmp_path, rows)), pre=1, post=1)
    ids2 = tok(text, add_special_tokens=False).input_ids
    words = [tok.decode([ids2[p]]) for p in s.positions[s.documents == 0]]
    assert words == [" walked", " match", " talked"]
    assert s.labels.tolist() == [0, 1, 0, 1] and s.names == ("past", "noun")
    assert s.lines.tolist() == [1, 3, 2, 4]
