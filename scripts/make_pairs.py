"""Write the built-in minimal-pair sets, ``mechprobe/data/pairs_{ioi,negation}.jsonl``.

Every name and answer word used here is one token (with its leading space) for the GPT-2,
SmolLM2 (Llama) and Gemma 3 tokenizers; ``--check`` verifies that with the offline
tokenizers. Run: ``python scripts/make_pairs.py [--check]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "mechprobe" / "data"

NAMES = [
    "Mary",
    "John",
    "Tom",
    "James",
    "Paul",
    "Anna",
    "Sarah",
    "Kate",
    "Lisa",
    "Emma",
    "David",
    "Peter",
    "Alice",
    "Jack",
    "Sam",
    "Ben",
    "Laura",
    "Rose",
    "Eric",
    "Mike",
]
PLACES = ["store", "park", "school", "office", "garden", "beach", "market", "station"]
OBJECTS = ["drink", "book", "ball", "gift", "ring", "letter", "key", "bag", "pen", "cake"]
IOI_TEMPLATES = {
    "went": "When {A} and {B} went to the {place}, {B} gave a {obj} to",
    "after": "After {A} and {B} went to the {place}, {B} gave a {obj} to",
    "while": "While {A} and {B} were working at the {place}, {B} gave a {obj} to",
    "then": "Then, {A} and {B} went to the {place}. {B} gave a {obj} to",
    "got": "When {A} and {B} got a {obj} at the {place}, {B} decided to give it to",
}
#: (subject, the state named, its opposite)
STATES = [
    ("light", "on", "off"),
    ("door", "open", "closed"),
    ("water", "hot", "cold"),
    ("glass", "full", "empty"),
    ("towel", "wet", "dry"),
    ("plant", "alive", "dead"),
    ("lamp", "on", "off"),
    ("window", "open", "closed"),
    ("soup", "hot", "cold"),
    ("box", "full", "empty"),
    ("road", "wet", "dry"),
    ("fish", "alive", "dead"),
    ("oven", "hot", "cold"),
    ("shop", "open", "closed"),
    ("bottle", "full", "empty"),
    ("shirt", "wet", "dry"),
    ("tea", "hot", "cold"),
    ("gate", "open", "closed"),
    ("radio", "on", "off"),
    ("cup", "full", "empty"),
    ("kettle", "hot", "cold"),
    ("jar", "full", "empty"),
    ("coat", "wet", "dry"),
    ("heater", "on", "off"),
    ("screen", "on", "off"),
]
#: Clean negates the state (answer: its opposite), corrupt affirms it; the same token length.
NEGATION_TEMPLATES = {
    "either": (
        "The {s} was either {x} or {y}. It was not {x}. It was",
        "The {s} was either {x} or {y}. It was still {x}. It was",
    ),
    "since": (
        "The {s} is {x} or {y}. Since it is not {x}, it is",
        "The {s} is {x} or {y}. Since it is still {x}, it is",
    ),
    "either_so": (
        "The {s} is either {x} or {y}. It is not {x}, so it is",
        "The {s} is either {x} or {y}. It is still {x}, so it is",
    ),
    "not_so": ("The {s} is not {x}, so the {s} is", "The {s} is very {x}, so the {s} is"),
}


def ioi_pairs(n_per_template: int = 24, seed: int = 0) -> list[dict[str, str]]:
    """IOI pairs: clean names the indirect object; corrupt swaps the subject's second mention."""
    rng = random.Random(seed)
    out = []
    for name, t in IOI_TEMPLATES.items():
        combos = list(itertools.permutations(NAMES, 2))
        rng.shuffle(combos)
        for a, b in combos[:n_per_template]:
            place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
            clean = t.format(A=a, B=b, place=place, obj=obj)
            # the second mention names the other person: the answer flips to B
            corrupt = t.replace("{B} gave", "{A} gave").replace("{B} decided", "{A} decided")
            corrupt = corrupt.format(A=a, B=b, place=place, obj=obj)
            out.append(
                {
                    "clean": clean,
                    "corrupt": corrupt,
                    "answer": f" {a}",
                    "wrong": f" {b}",
                    "template": name,
                }
            )
    return out


def negation_pairs() -> list[dict[str, str]]:
    """Negation pairs: the clean prompt negates a state (answer: the opposite); corrupt affirms."""
    out = []
    for name, (clean_t, corrupt_t) in NEGATION_TEMPLATES.items():
        for s, x, y in STATES:
            out.append(
                {
                    "clean": clean_t.format(s=s, x=x, y=y),
                    "corrupt": corrupt_t.format(s=s, x=x, y=y),
                    "answer": f" {y}",
                    "wrong": f" {x}",
                    "template": name,
                }
            )
    return out


def check(pairs: list[dict[str, str]]) -> None:
    """Every pair: clean/corrupt the same length and one-token answers, on all three tokenizers."""
    from transformers import AutoTokenizer

    from mechprobe.models import load_model
    from mechprobe.models.gguf import gemma3_dir, smollm2_dir

    toks = {
        "gpt2": load_model("tiny-gpt2", device="cpu").tokenizer,
        "smollm2": AutoTokenizer.from_pretrained(smollm2_dir()),
        "gemma3": AutoTokenizer.from_pretrained(gemma3_dir()),
    }
    for tname, tok in toks.items():
        for i, p in enumerate(pairs):
            a, b = tok(p["clean"]).input_ids, tok(p["corrupt"]).input_ids
            assert len(a) == len(b), (tname, i, p)
            for k in ("answer", "wrong"):
                assert len(tok(p[k], add_special_tokens=False).input_ids) == 1, (tname, i, k)
    print(f"{len(pairs)} pairs: lengths and single tokens hold on {', '.join(toks)}")


def main() -> None:
    """Write both sets (and check them with ``--check``)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    for name, pairs in (("ioi", ioi_pairs()), ("negation", negation_pairs())):
        if args.check:
            check(pairs)
        text = "".join(json.dumps(p) + "\n" for p in pairs)
        (DATA / f"pairs_{name}.jsonl").write_text(text, encoding="utf-8")
        print(f"wrote {len(pairs)} {name} pairs")


if __name__ == "__main__":
    main()
