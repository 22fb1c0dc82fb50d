"""Figures that read right (issue 24): each defect found in the report and the sweep page stays
fixed. Arrays are built by hand, so each check is exact and takes milliseconds."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from mechprobe.plots.replace import many_figure
from mechprobe.plots.similarity import BLOCK_COLOURS, cosine_spread, histogram_lines
from mechprobe.plots.sweep import MIN_LAYERS_JOINED, depth_overlay
from mechprobe.plots.theme import themed
from mechprobe.report.page import CSS

pytestmark = pytest.mark.unit


def test_log_axes_label_every_tick_with_its_value():
    r = np.array([1.0, 0.1, 0.5])
    fig = many_figure([("x0.1", r, r * 0.8, r * 1.2)], 0, "t")
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.yaxis.tickformat == "~g" and fig.layout.yaxis.dtick == "D2"
    # a format or ticks chosen by the figure are kept
    kept = themed(go.Figure(), yaxis={"type": "log", "tickformat": ".0e"})
    assert kept.layout.yaxis.tickformat == ".0e" and kept.layout.yaxis.dtick is None


def test_first_layer_spike_leaves_the_other_layers_readable():
    edges = np.linspace(-1, 1, 101)
    hist = np.ones((2, 6, 4, 100))
    hist[:, :, 0, 0] = hist[:, :, 0, -1] = 1000.0  # layer 0: every pair at +-1
    fig = histogram_lines(hist, edges, [0, 1, 2, 3])
    flat = 1 / 100  # every other layer: a uniform histogram
    assert fig.layout.yaxis.range == pytest.approx((0, 1.15 * flat))
    notes = [a.text for a in fig.layout.annotations if "off scale" in (a.text or "")]
    assert len(notes) == 4 and notes[0] == "layer 0 off scale: peak 0.48"  # 1000 / (98 + 2000)
    # without a spike the axes are left to plotly
    plain = histogram_lines(np.ones((2, 6, 4, 100)), edges, [0, 1, 2, 3])
    assert plain.layout.yaxis.range is None
    assert not [a for a in plain.layout.annotations if "off scale" in (a.text or "")]


def test_cosine_spread_gives_each_block_its_own_colour():
    fig = cosine_spread(np.ones((2, 6, 3)), np.ones((2, 6, 3)), [0, 1, 2])
    colours = {t.name.split(",")[0]: t.line.color for t in fig.data}
    assert len(set(colours.values())) == 6 == len(set(BLOCK_COLOURS))


def test_sweep_puts_each_quantity_on_its_own_axis():
    curves = {
        "m": {
            "% significant, MLP": ([0, 1, 2, 3, 4], [80.0, 60, 50, 40, 30]),
            "held-out accuracy, MLP": ([0, 1, 2, 3, 4], [0.8, 0.7, 0.6, 0.6, 0.6]),
        }
    }
    fig = depth_overlay(curves, {"m": 5}, "t")
    axes = {t.name: t.yaxis for t in fig.data}
    assert axes == {"m: % significant, MLP": "y", "m: held-out accuracy, MLP": "y2"}
    assert fig.layout.yaxis.title.text == "% significant"
    assert fig.layout.yaxis2.title.text == "held-out accuracy"


def test_sweep_does_not_join_the_layers_of_a_shallow_model():
    curves = {
        "deep": {"norm ratio, x10": (list(range(12)), [1.0] * 6 + [10.0] * 6)},
        "tiny": {"norm ratio, x10": ([0, 1], [1.0, 10.0])},
    }
    fig = depth_overlay(curves, {"deep": 12, "tiny": 2}, "t")
    modes = {t.name: t.mode for t in fig.data}
    assert MIN_LAYERS_JOINED == 4
    assert modes == {
        "deep: norm ratio, x10": "lines+markers",
        "tiny: norm ratio, x10 (2 layers: not joined)": "markers",
    }
    assert fig.layout.yaxis.type == "log"  # x0.1 and x10 symmetric


def test_table_headers_never_break_inside_a_word():
    th = next(line for line in CSS.splitlines() if line.startswith("th {"))
    assert "overflow-wrap: normal" in th
