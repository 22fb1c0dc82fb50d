"""Check the built-in fallback text: word count and negation/affirmation targets per tokenizer.

Usage:
    python scripts/check_sample_text.py [PATH]   (default: mechprobe/data/sample_negation.txt)

The issue asks for at least 3,000 words and 100 targets of each class.
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import AutoTokenizer

from mechprobe.corpus.classes import negation_preset
from mechprobe.corpus.targets import decode_pieces, tokenize_text
from mechprobe.models.sources import gpt2_tokenizer, smollm2_dir

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "mechprobe/data/sample_negation.txt"


def main() -> None:
    """Print word count and per-tokenizer target counts."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    text = path.read_text(encoding="utf-8")
    print(f"{path.name}: {len(text.split())} words")
    tokenizers = {"gpt2": gpt2_tokenizer(), "smollm2": AutoTokenizer.from_pretrained(smollm2_dir())}
    for name, tokenizer in tokenizers.items():
        ids = tokenize_text(tokenizer, text)
        targets = negation_preset().select(decode_pieces(tokenizer, ids))
        neg = int((targets.labels == 1).sum())
        print(f"{name}: {len(ids)} tokens, {neg} negation, {len(targets.labels) - neg} affirmation")


if __name__ == "__main__":
    main()
