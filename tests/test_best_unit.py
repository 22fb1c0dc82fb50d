"""The best unit's heatmap is read by the main forward pass, not by a second pass over a class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from mechprobe.experiments import negation as e1
from mechprobe.experiments import probe_analysis
from mechprobe.experiments.negation import NegationConfig
from mechprobe.experiments.probe_samples import take_samples
from mechprobe.models.registry import model_shape

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def run(tiny_model, shared_text):
    config = NegationConfig(text=str(shared_text), max_samples=30, folds=0, no_controls=True)
    config = e1.resolve(config, model_shape(tiny_model))
    with pytest.MonkeyPatch.context() as mp:  # a second pass over the class would fail here
        mp.setattr(probe_analysis, "_unit_pass", lambda *a, **k: pytest.fail("second pass"))
        result = e1.run(config, tiny_model)
    samples = take_samples(config, tiny_model.tokenizer)
    assert (samples.labels == result.arrays["labels"]).all()
    return config, result, samples


def test_heatmap_and_its_scale_equal_hf_hooks_over_every_window(run, tiny_reference):
    config, result, samples = run
    hf, _ = tiny_reference
    a, b = result.arrays, result.summary["best_unit"]
    assert (b["rule"], b["component"], b["layer"]) == ("course", "mlp", config.detail_layer)
    rows = np.flatnonzero(a["labels"] == 1)  # every negation window
    got = {}
    layer = hf.transformer.h[b["layer"]].mlp.c_fc
    handle = layer.register_forward_hook(lambda m, i, o: got.__setitem__("x", o.detach()))
    try:
        with torch.no_grad():
            hf(torch.as_tensor(samples.windows[rows]))
    finally:
        handle.remove()
    unit = got["x"][..., b["unit"]].double().numpy()  # [windows, positions]
    lo = config.context_pre - 5
    shown = unit[: config.heatmap_windows, lo:]
    assert_allclose(a["best_unit_heatmap"], shown, atol=1e-4)
    low, high = unit.min(), unit.max()  # the course's scale: every window and position
    assert_allclose(a["best_unit_heatmap_scaled"], ((shown - low) / (high - low)) ** 2, atol=1e-4)
    assert len(rows) > config.heatmap_windows  # so the scale is over more than the shown ones


def test_the_capture_equals_a_second_pass_exactly(run, tiny_model):
    from mechprobe.activations import collect_units

    config, result, samples = run
    b = result.summary["best_unit"]
    last = np.flatnonzero(result.arrays["labels"] == 1)
    hook, col = b["hook"], b["hook_column"]
    full = probe_analysis._unit_pass(config, tiny_model, samples, last, hook, col)
    cap = probe_analysis.HeatCapture(hook, config.heatmap_windows)
    collect_units(
        tiny_model, samples.windows[last], config.context_pre, list(config.layers),
        config.components, batch_size=config.batch_size, hooks=[(hook, cap)],
    )  # fmt: skip
    heat, low, high = cap.unit(col)
    np.testing.assert_array_equal(heat, full[: config.heatmap_windows])
    assert (low, high) == (full.min(), full.max())


def test_the_accuracy_rule_still_takes_a_pass_ended_at_its_layer(
    tiny_model, tiny_reference, shared_text
):
    config = NegationConfig(
        text=str(shared_text), max_samples=30, folds=0, no_controls=True, best_unit="accuracy",
        components=("mlp",),
    )  # fmt: skip
    config = e1.resolve(config, model_shape(tiny_model))
    assert probe_analysis.HeatCapture.for_probe(config, tiny_model, None) is None
    result = e1.run(config, tiny_model)
    samples = take_samples(config, tiny_model.tokenizer)
    b = result.summary["best_unit"]
    assert b["rule"] == "accuracy" and b["component"] == "mlp"
    got = {}
    hf, _ = tiny_reference
    fc = hf.transformer.h[b["layer"]].mlp.c_fc
    handle = fc.register_forward_hook(lambda m, i, o: got.__setitem__("x", o.detach()))
    rows = np.flatnonzero(samples.labels == 1)
    try:
        with torch.no_grad():
            hf(torch.as_tensor(samples.windows[rows]))
    finally:
        handle.remove()
    unit = got["x"][..., b["unit"]].double().numpy()
    shown = unit[: config.heatmap_windows, config.context_pre - 5 :]
    assert_allclose(result.arrays["best_unit_heatmap"], shown, atol=1e-4)
    scaled = ((shown - unit.min()) / (unit.max() - unit.min())) ** 2
    assert_allclose(result.arrays["best_unit_heatmap_scaled"], scaled, atol=1e-4)
