"""Session-scoped model fixtures (each model loaded once per test session) and markers."""

from __future__ import annotations

import os

import pytest

from tests.helpers import SHARED_TEXT


@pytest.fixture(scope="session")
def tiny_model():
    """The random-weight tiny GPT-2 as a TransformerLens bridge."""
    from mechprobe.models import load_model

    return load_model("tiny-gpt2", device="cpu")


@pytest.fixture(scope="session")
def tiny_reference():
    """An independent HF instance of tiny-gpt2 with the same weights: (hf_model, tokenizer)."""
    from mechprobe.models import load_reference

    return load_reference("tiny-gpt2", device="cpu")


@pytest.fixture(scope="session")
def smol_model():
    """SmolLM2-135M as a TransformerLens bridge (integration tier)."""
    from mechprobe.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def smol_reference():
    """An independent HF instance of SmolLM2-135M: (hf_model, tokenizer)."""
    from mechprobe.models import load_reference

    return load_reference("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def shared_text():
    """Path of The Variable Man (../shared/data/pg32154.txt); required in CI."""
    if not SHARED_TEXT.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"shared text missing in CI: {SHARED_TEXT}")
        pytest.skip(f"shared text not found at {SHARED_TEXT}")
    return SHARED_TEXT


def pytest_collection_modifyitems(config, items):
    """Skip hub tests unless MECHPROBE_HUB=1 (they need a network)."""
    if os.environ.get("MECHPROBE_HUB") == "1":
        return
    skip = pytest.mark.skip(
        reason="needs the HuggingFace hub (network); set MECHPROBE_HUB=1 to run"
    )
    for item in items:
        if "hub" in item.keywords:
            item.add_marker(skip)
