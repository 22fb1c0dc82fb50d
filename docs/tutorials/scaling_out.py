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
# # 4. Scaling out
#
# By default a probe keeps every activation in memory: fine for a book on a small model, not
# for a million windows on gpt2-xl (2.2 TB). With a **store** (`store=` here, `--store` on the
# command line) the activations are written to a zarr v3 store as they are collected, and the
# probes are fitted from it block by block with **Dask**: on this machine (Dask's local
# scheduler, the default) or on a cluster (`scheduler="tcp://HOST:PORT"`). This page runs the
# whole path on `tiny-gpt2` (2 layers, random weights: the numbers mean nothing, the mechanics
# are the same) so that it takes seconds. The [Scaling out](../scaling_out.md) page has the
# details, the cluster set-up and a costed plan for gpt2-xl.

# %%
import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import zarr

import mechprobe

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a notebook


def quiet():
    """Keep the progress bars (stderr) off the page."""
    return contextlib.redirect_stderr(io.StringIO())


REPO = Path(mechprobe.__file__).resolve().parents[1]
text = (REPO.parent / "shared" / "data" / "pg32154.txt").read_text(encoding="utf-8")[:60_000]
model = mechprobe.load_model("tiny-gpt2")
classes = {"modal": ["can", "could", "may"], "negation": ["not", "never"]}
work = Path(tempfile.mkdtemp())

# %% [markdown]
# ## In memory, then through a store
#
# The same probe twice: once in memory, once through a store. The in-sample results are
# bit-identical (the held-out statistics are computed from the same activations too).

# %%
settings = dict(families=["mlp"], context_pre=30, context_post=5)
with quiet():
    in_memory = mechprobe.probe(model, text, classes, **settings)
    stored = mechprobe.probe(model, text, classes, store=str(work / "e1.zarr"), **settings)
a, b = in_memory.to_dataframe(), stored.to_dataframe()
print("same betas:", (a["beta"].to_numpy() == b["beta"].to_numpy()).all(),
      "| same p-values:", a["pvalue"].equals(b["pvalue"]))  # fmt: skip

# %% [markdown]
# ## What is in the store
#
# One `[window, unit]` array per (family, layer), chunked by window block and unit block, with
# the labels, the positions, a done flag per window block (a killed collection resumes at the
# first block not done) and the manifest that says what the store holds: a store made for other
# windows, labels, layers or units is refused, never mixed.

# %%
group = zarr.open_group(str(work / "e1.zarr"), mode="r")
print(group.tree())

# %%
{k: group.attrs["manifest"][k] for k in list(group.attrs["manifest"])[:6]}

# %% [markdown]
# ## Fitting only where the score test says so
#
# While it collects, the store also accumulates the state of a **score test** per unit (the
# test of beta = 0 that needs no fit: it streams over the windows in one pass). With
# `score_threshold` the full logistic fits run only for the units whose score-test p is below
# it; the others are reported as not fitted. A complete store is reused without running the
# model again.

# %%
with quiet():
    screened = mechprobe.probe(
        model, text, classes, store=str(work / "e1.zarr"), score_threshold=1e-3, **settings
    )
df = screened.to_dataframe()
print(f"{df['beta'].notna().sum()} of {len(df)} units fitted (score-test p < 1e-3)")

# %% [markdown]
# ## On a cluster
#
# The same call with `scheduler="tcp://SCHEDULER:8786"` (or `--scheduler` on the command line)
# collects and fits on a dask.distributed cluster: workers load the model once each, write
# disjoint blocks of the store (a shared filesystem or an object store such as
# `s3://bucket/e1.zarr`), then fit blocks of units. The set-up:
#
# ```bash
# dask scheduler --port 8786                                            # one machine
# CUDA_VISIBLE_DEVICES=0 dask worker tcp://SCHEDULER:8786 --nworkers 1 --nthreads 2 --resources GPU=1
# dask worker tcp://SCHEDULER:8786 --nworkers 4 --nthreads 8            # CPU machines, for the fits
# mechprobe negation --model gpt2-xl --text corpus.txt --batch-size 256 \
#     --store s3://bucket/e1-gpt2-xl.zarr --scheduler tcp://SCHEDULER:8786 --score-threshold 1e-3
# ```
