"""Session-scoped model fixtures (each model loaded once per test session), markers, doctests.

This file sits at the repository root so that its fixtures serve both the tests in ``tests/`` and
the docstring examples in ``mechprobe/``, which the suite runs as doctests on tiny-gpt2.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.helpers import SHARED_TEXT

# zarr 3 needs Python 3.11+: on 3.10 the activation store's examples are not collected
collect_ignore = (
    ["mechprobe/store", "mechprobe/collect_store.py", "mechprobe/experiments/probe_store.py"]
    if sys.version_info < (3, 11)
    else []
)


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
        if os.environ.get("MECHPROBE_CI"):
            pytest.fail(f"shared text missing in CI: {SHARED_TEXT}")
        pytest.skip(f"shared text not found at {SHARED_TEXT}")
    return SHARED_TEXT


@pytest.fixture
def tiny_cli(monkeypatch, tiny_model, tiny_reference):
    """Make CLI runs on tiny-gpt2 reuse the session's instances (and skip PNG export)."""
    import mechprobe.models

    monkeypatch.setattr(mechprobe.models, "load_model", lambda *a, **k: tiny_model)
    monkeypatch.setattr(mechprobe.models, "load_reference", lambda *a, **k: tiny_reference)
    monkeypatch.setenv("MECHPROBE_NO_PNG", "1")


DOCTEST_TEXTS = (
    "The old lighthouse keeper did not expect any visitors",
    "She could see the small boat from the old harbour wall",
)


@pytest.fixture(autouse=True)
def _doctest_namespace(request, doctest_namespace):
    """Names the docstring examples use: ``model``/``hf``/``tok`` (tiny-gpt2), ``tokens`` [2, 9]."""
    if not isinstance(request.node, pytest.DoctestItem):
        return
    import numpy as np
    import torch

    from mechprobe.models.registry import model_shape

    model = request.getfixturevalue("tiny_model")
    hf, tok = request.getfixturevalue("tiny_reference")
    ids = [tok(t, add_special_tokens=False).input_ids[:9] for t in DOCTEST_TEXTS]
    doctest_namespace.update(
        np=np,
        torch=torch,
        model=model,
        hf=hf,
        tok=tok,
        tokens=torch.tensor(ids),
        model_shape=model_shape,
    )
    request.getfixturevalue("tmp_path")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.chdir(request.getfixturevalue("tmp_path"))


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
