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
# # 1. Probe your own classes
#
# A *probe* asks: can a unit's activation tell two kinds of token apart? `mechprobe.probe` takes a
# model, a text and a dict of classes, finds every token of each class, runs the model over a
# window of context before each one, and fits one logistic regression per unit and layer. This
# tutorial probes **past vs present tense** on `smollm2-135m` (SmolLM2-135M-Instruct, offline) in
# a few seconds: a slice of *The Variable Man*, at most 80 samples a class, the MLP units of three
# early layers (the forward pass stops after the last layer asked for), short windows.
#
# This page is a notebook executed on every build of the site and by the test suite
# (`tests/test_tutorials.py`): every number below is what this code printed.

# %%
import contextlib
import io
import tempfile
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


# The shared text beside the repository (the test suite and CI read it from there).
REPO = Path(mechprobe.__file__).resolve().parents[1]
text = (REPO.parent / "shared" / "data" / "pg32154.txt").read_text(encoding="utf-8")
with quiet():
    model = mechprobe.load_model("smollm2-135m")

# %% [markdown]
# ## The classes
#
# A class is a list of words (exact match on the stripped, lower-cased token), or a dict of
# rules with the class file's keys (`words`, `regex`, `contains`, `next_starts_with_space`,
# `next_not`). Labels follow the dict's order: `present` is 0, `past` is 1, and each probe asks
# whether a unit separates class 1 from class 0.

# %%
classes = {
    "present": ["is", "are", "has", "have", "does"],
    "past": ["was", "were", "had", "did"],
}
with quiet():
    res = mechprobe.probe(
        model,
        text[:40_000],  # a slice keeps this page fast; the whole book works the same way
        classes,
        families=["mlp"],  # the MLP units (mlp.hook_pre: gate_proj's output on Llama)
        layers=[0, 3, 6],
        context_pre=20,
        context_post=2,
        max_samples=80,  # the first 80 of each class
    )
res

# %% [markdown]
# The `repr` is the summary: how many samples of each class were found, the best layer, and the
# verdict. `res.samples` lists every sample: its document, token position, the token, its class
# and label, and the held-out fold it fell in.

# %%
res.samples.head()

# %%
res.samples["class"].value_counts()

# %% [markdown]
# ## The table
#
# `to_dataframe()` has one row per family x layer x unit: the in-sample fit (the course's
# statistics: `beta`, the Wald `pvalue`, in-sample `accuracy`, `significant` after the
# per-layer correction) and the held-out accuracy of the same unit. A unit whose activation
# separates the classes perfectly has no finite maximum-likelihood `beta` (it is `inf`, its Wald
# p undefined); for those units mechprobe also fits Firth's penalised regression, whose estimate
# is finite (see [Statistics](../concepts/statistics.md)).

# %%
df = res.to_dataframe()
print(len(df), "rows =", df["layer"].nunique(), "layers x", df["unit"].nunique(), "MLP units")
df.sort_values("heldout_accuracy", ascending=False).head()[
    ["layer", "unit", "beta", "pvalue", "accuracy", "heldout_accuracy"]
]

# %%
per_layer = df.groupby("layer").agg(
    significant=("significant", "mean"),
    mean_heldout=("heldout_accuracy", "mean"),
    best_heldout=("heldout_accuracy", "max"),
)
per_layer

# %% [markdown]
# ## What the numbers mean
#
# - **In-sample accuracy** is the accuracy of a unit's fit on the samples it was fitted on. With
#   thousands of units and a few hundred samples some units separate the classes by chance, so
#   in-sample numbers flatter.
# - **Held-out accuracy** is measured on samples the fit never saw: 5 stratified folds, grouped so
#   that two samples whose context windows overlap never fall on different sides of a split
#   (overlapping windows share tokens, which would leak the answer). Chance is the share of the
#   larger class, not 0.5, when the classes are unbalanced.
# - **The control task** (Hewitt and Liang, 2019) gives every *word type* a random class, class
#   sizes kept, and fits the same probes. **Selectivity** is the real held-out accuracy minus the
#   control's. A probe that only reads which word it is looking at (`was` vs `is`) decodes the
#   control task as well as the real one: selectivity near 0 says the units encode the words'
#   identity, not tense as such.
# - **The lexical baseline** fits the same probes on the token embedding alone (`hook_embed`): what
#   the input token gives away before any layer has run.
# - **The shuffled-label baseline** is the share of units that come out significant when the
#   labels are shuffled: what the correction lets through by chance.
#
# All of it is in the result's `summary` and in its dataset `res.ds` (an `xarray.Dataset` with
# named dimensions):

# %%
s = res.summary
{k: s[k] for k in ("n_samples", "folds") if k in s}

# %%
print(res.finding.this_run)

# %% [markdown]
# When the selectivity is within the accuracy's own uncertainty of 0, the finding says so in a
# caveat: tense is carried by a handful of frequent words here, and a probe that recognises the
# words themselves decodes a random labelling of them just as well. To ask about tense rather
# than the words, hold words out (train on some verbs, test on others) or use a class defined by
# a rule over many word types (`regex`).

# %% [markdown]
# ## The figure
#
# `res.figures()` returns the report's figures as plotly figures. The laminar figure puts, per
# layer, the share of significant units, the held-out accuracy with its controls, and the lexical
# baseline side by side.

# %%
figs = res.figures()
sorted(figs)

# %%
show(figs["laminar"])

# %% [markdown]
# ## Saving and reading back
#
# `save(out)` writes the same step directory as the command line (`OUT/probe/`: arrays,
# `summary.json`, `finding.json`, the manifest and the figures); `mechprobe.load_result` reads it
# back, from either.

# %%
out = Path(tempfile.mkdtemp())
step = res.save(out)
back = mechprobe.load_result(step)
back.to_dataframe().equals(df)

# %% [markdown]
# The same probe from the command line, with a class file (TOML) instead of the dict:
#
# ```bash
# mechprobe probe --model smollm2-135m --classes tense.toml --text story.txt \
#     --components mlp --layers 0,3,6 --context-pre 20 --context-post 2 --max-samples 80
# ```
