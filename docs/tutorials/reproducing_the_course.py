# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Reproducing the course
#
# The four experiments come from [Mike X Cohen's course on LLM
# mechanisms](https://github.com/mikexcohen/LLM_course) (its solution notebooks are public in
# that repository), where they run on GPT-2 with plain HuggingFace hooks. Each is one library
# call here, returns its finding next to the course's claim, and draws the report's figures.
# This page runs them on `smollm2-135m` with reduced settings so that it builds in seconds; the
# [Findings](../findings.md) page has the full runs on both offline models.
#
# `smollm2-135m` is SmolLM2-135M-Instruct from a 4-bit GGUF file (Q4_1) dequantised to float32,
# not GPT-2 and not the original bf16 checkpoint: a claim that "holds" here holds for these
# weights; numbers are not comparable digit for digit with published ones
# (see [Models and weights](../models.md)).

# %%
import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import plotly.io as pio
from IPython.display import HTML

import mechprobe


def show(fig):
    """Show a plotly figure on the site, as wide as the page (plotly.js is loaded by the page).

    In Jupyter, ``fig.show()`` does the same.
    """
    fig.update_layout(width=None, height=fig.layout.height or 450, autosize=True)
    html = pio.to_html(fig, include_plotlyjs=False, full_html=False, config={"responsive": True})
    return HTML(html)


warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a notebook


def quiet():
    """Keep the progress bars (stderr) and the experiments' own prints off the page."""
    return contextlib.redirect_stderr(io.StringIO())


REPO = Path(mechprobe.__file__).resolve().parents[1]
text = (REPO.parent / "shared" / "data" / "pg32154.txt").read_text(encoding="utf-8")
with quiet():
    model = mechprobe.load_model("smollm2-135m")
    reference = mechprobe.load_reference("smollm2-135m")  # the HF model for E2's and E4's parity
findings = {}

# %% [markdown]
# ## E1: negation tuning in Q/K/V and MLP units
#
# The course fits one logistic regression per unit, negation tokens (`not`, `never`, `n't`, ...)
# against affirmation tokens, and counts the significant units per layer. Here: the MLP units of
# two layers, 60 samples a class from the first 120,000 characters.

# %%
with quiet():
    e1 = mechprobe.negation(model, text[:120_000], layers=[1, 10], components=["mlp"],
                            context_pre=30, context_post=5, max_samples=60)  # fmt: skip
findings["E1"] = e1.finding
print("course:", e1.finding.claim)
print(f"here ({e1.finding.verdict}):", e1.finding.this_run)

# %% [markdown]
# ## E2: isolating attention heads
#
# The raw query-key scores before the softmax: the course finds most of them negative, which is
# what makes attention sparse. mechprobe measures the share at every layer over every query
# position, with a bootstrap band, and repeats the course's dissection of one layer.

# %%
with quiet(), contextlib.redirect_stdout(io.StringIO()):
    e2 = mechprobe.heads(model, reference=reference, n_boot=200)
findings["E2"] = e2.finding
print("course:", e2.finding.claim)
print(f"here ({e2.finding.verdict}):", e2.finding.this_run)

# %%
show(e2.figures()["negative_by_layer"])

# %% [markdown]
# ## E3: Q/K/V similarities across layers
#
# The cosine between every pair of Q/K/V units across 54 sentences at one target word: the
# course finds them piled up near +-1 early and flattened toward 0 with depth. Here every third
# layer, without the bootstrap (`n_boot=0`), to keep the page fast.

# %%
with quiet():
    e3 = mechprobe.similarity(model, layers=list(range(0, 30, 3)), n_boot=0)
findings["E3"] = e3.finding
print("course:", e3.finding.claim)
print(f"here ({e3.finding.verdict}):", e3.finding.this_run)

# %%
show(e3.figures()["depth"])

# %% [markdown]
# ## E4: replacing activations
#
# Zero a head, replace MLP units with noise, scale a block's output by 0.1 and by 10, and follow
# the norm of the hidden state through the later blocks; every intervention is run twice, as
# TransformerLens hooks and as plain HF hooks, and the two must agree. The scaling is measured
# over every position of many sentences: here the first 12 of the 54 shipped ones.

# %%
shipped = (REPO / "mechprobe" / "data" / "sentences_her.txt").read_text(encoding="utf-8")
sentences = Path(tempfile.mkdtemp()) / "sentences.txt"
sentences.write_text("\n".join(shipped.splitlines()[:12]) + "\n", encoding="utf-8")
with quiet(), contextlib.redirect_stdout(io.StringIO()):
    e4 = mechprobe.replace(model, reference=reference, sentences=str(sentences), n_boot=200)
findings["E4"] = e4.finding
print("course:", e4.finding.claim)
print(f"here ({e4.finding.verdict}):", e4.finding.this_run)

# %%
show(e4.figures()["many"])

# %% [markdown]
# ## What holds here
#
# Each finding's verdict and key number, side by side (the report and the
# [Findings](../findings.md) page show the same `finding.json` of full runs):

# %%
pd.DataFrame({e: {"verdict": f.verdict, "key number": f.key} for e, f in findings.items()}).T
