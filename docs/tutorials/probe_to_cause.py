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
# # 2. From probe to cause
#
# A probe says that a unit's activation *carries* information about a class; it does not say
# that the model *uses* it. The causal test changes the units and watches the output.
# `mechprobe.ablate` does it for a probe's result: it picks each layer's best units **on samples
# it will not measure**, replaces them at each measured sample's token (by their mean, by 0, or
# by their value at a sample of the other class), measures how far the model's next-token
# predictions move, and compares that with the same ablation of random units of the same layer,
# many times. (`mechprobe.patch`, activation patching, is the other half of the causal tools.)

# %%
import contextlib
import io
import warnings
from pathlib import Path

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
    """Keep the progress bars (stderr) off the page."""
    return contextlib.redirect_stderr(io.StringIO())


REPO = Path(mechprobe.__file__).resolve().parents[1]
text = (REPO.parent / "shared" / "data" / "pg32154.txt").read_text(encoding="utf-8")[:40_000]
with quiet():
    model = mechprobe.load_model("smollm2-135m")

# %% [markdown]
# ## The probe
#
# As in tutorial 1: past vs present tense, the MLP units of layer 3.

# %%
LAYER = 3
classes = {"present": ["is", "are", "has", "have", "does"], "past": ["was", "were", "had", "did"]}
with quiet():
    res = mechprobe.probe(model, text, classes, families=["mlp"], layers=[LAYER],
                          context_pre=20, context_post=2, max_samples=80)  # fmt: skip
df = res.to_dataframe()
top = df.sort_values("heldout_accuracy", ascending=False).head(20)
print(f"layer {LAYER}: the 20 best units by held-out accuracy "
      f"({top['heldout_accuracy'].min():.2f} to {top['heldout_accuracy'].max():.2f})")  # fmt: skip

# %% [markdown]
# ## The ablation
#
# The samples of one of the probe's held-out folds are measured (at most 16, balanced); the
# other folds choose the 20 units of layer 3 with the best held-out accuracy. Zeroing them
# (`method="zero"`) at each measured sample's verb, we read the KL divergence between the
# next-token distributions with and without the change at the verb and the two tokens after it
# (the probe's `context_post`), and the same for 50 sets of 20 random units of the layer: the
# probe's units matter causally only if removing them moves the output more than removing
# random units does. The probe's text and classes were given in memory, so they are passed
# again.

# %%
with quiet():
    ab = mechprobe.ablate(model, res, k=20, draws=50, method="zero", layers=[LAYER],
                          text=text, classes=classes)  # fmt: skip
ab.to_dataframe()[["family", "layer", "metric", "observed", "ci_low", "ci_high", "pvalue",
                   "difference"]]  # fmt: skip

# %%
show(ab.figures()["null"])

# %%
print(ab.finding.this_run)

# %% [markdown]
# ## Reading it
#
# Compare the diamond (the probe's units, with its bootstrap interval over the measured samples)
# with the grey dots (random units). A probe's units can decode a class perfectly and
# still matter little to the output (the model may read the class from elsewhere, or not use it
# at this position), and random units can matter a lot (units with large activations). What this
# tests is only *these 20 units at this one position*; a causal claim about tense would need
# a targeted output measure (the probability of a past-tense continuation, say) and more
# samples; `difference` (past minus present) says whether the effect is specific to a class.
#
# The ablated passes run on the plain HuggingFace model with forward hooks (see
# [Statistics](../concepts/statistics.md#ablation-do-the-decoding-units-matter) for how they
# are made fast), and the test suite recomputes them on whole windows.
