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
# that the model *uses* it. The causal test changes the units and watches the output. mechprobe
# will have one call for each: `mechprobe.ablate` (zero or resample a probe's best units and
# measure the change in the model's predictions) and `mechprobe.patch` (activation patching on
# the IOI set). **Neither exists yet**: they come with the causal-analysis issue. Until then
# this tutorial does the first by hand with what exists: a probe (`mechprobe.probe`) and the
# interventions of `mechprobe.interventions` (`MLPNoise`, `ZeroHead`, `ScaleOutput`, attached
# with `intervene`), which E4 (`mechprobe.replace`) checks against plain HuggingFace hooks.

# %%
import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch
from IPython.display import HTML

import mechprobe
from mechprobe.interventions import MLPNoise, intervene


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
top_units = [int(u) for u in top["unit"]]
print(f"layer {LAYER}: the 20 best units by held-out accuracy "
      f"({top['heldout_accuracy'].min():.2f} to {top['heldout_accuracy'].max():.2f})")  # fmt: skip

# %% [markdown]
# ## The intervention
#
# Each sample's window ends at its token (20 tokens of context, then the verb). We zero the 20
# best units at that last position (`MLPNoise` with mean 0 and std 0 replaces them with 0) and
# measure how far the model's prediction of the *next* token moves: the KL divergence between
# the next-token distributions with and without the change. The control zeroes 20 units drawn at
# random from the same layer, several times: a probe's best units matter causally only if
# removing them moves the output more than removing any 20 units.

# %%
tok = model.tokenizer
ids = tok(text, add_special_tokens=False)["input_ids"]
words = {w for ws in classes.values() for w in ws}
ends = [i for i in range(20, len(ids)) if tok.decode([ids[i]]).strip().lower() in words][:48]
windows = torch.tensor([ids[i - 20 : i + 1] for i in ends])
last = windows.shape[1] - 1
print(windows.shape[0], "windows of", windows.shape[1], "tokens")


def next_token_logprobs(units=None):
    """Log-probabilities of the next token at each window's last position."""
    changes = [] if units is None else [MLPNoise(LAYER, units=units, positions=last, mean=0.0,
                                                 std=0.0)]  # fmt: skip
    with torch.no_grad(), intervene(model, changes):
        return torch.log_softmax(model(windows)[:, -1].double(), dim=-1)


def kl(p_log, q_log):
    return (p_log.exp() * (p_log - q_log)).sum(-1).numpy()


base = next_token_logprobs()
probe_kl = kl(base, next_token_logprobs(top_units))
rng = np.random.default_rng(0)
d_mlp = mechprobe.model_shape(model).d_mlp
random_kl = [kl(base, next_token_logprobs(sorted(rng.choice(d_mlp, 20, replace=False).tolist())))
             for _ in range(3)]  # fmt: skip
print(f"zeroing the probe's 20 best units: mean KL {probe_kl.mean():.2e} nats")
for i, r in enumerate(random_kl):
    print(f"zeroing 20 random units (draw {i}):  mean KL {r.mean():.2e} nats")

# %%
fig = go.Figure()
fig.add_trace(go.Box(y=probe_kl, name="probe's best 20", boxpoints="all", jitter=0.5))
for i, r in enumerate(random_kl):
    fig.add_trace(go.Box(y=r, name=f"random 20 ({i})", boxpoints="all", jitter=0.5))
fig.update_layout(title=f"Next-token KL after zeroing 20 MLP units of layer {LAYER}",
                  yaxis={"title": "KL divergence (nats), log scale", "type": "log",
                         "tickformat": "~g"},
                  showlegend=False, template="plotly_white", height=420)  # fmt: skip
show(fig)

# %% [markdown]
# ## Reading it
#
# Compare the probe's box with the random ones. A probe's units can decode a class perfectly and
# still matter little to the output (the model may read the class from elsewhere, or not use it
# at this position), and random units can matter a lot (units with large activations). What this
# tests is only *these 20 units at this one position*; a causal claim about tense would need
# a targeted output measure (the probability of a past-tense continuation, say), a matched
# control, and many more samples: that is what `mechprobe.ablate` is meant to package.
#
# Every intervention used here is checked against plain HuggingFace hooks by `mechprobe replace`
# (E4; see [Parity with HuggingFace](../concepts/parity.md)): the TransformerLens hooks and
# the HF hooks give the same hidden states.
