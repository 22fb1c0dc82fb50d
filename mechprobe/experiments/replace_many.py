"""E4 over many samples: a block's output scaled, every sentence of a set, every position.

For each sentence (right-padded, no BOS) the baseline and each scale condition run once; at
every position ``1 .. len-1`` of every sentence the residual-stream norm after each block is
divided by the baseline's (the ratio curve), and the course's claim is tested per sample
(`mechprobe.stats.norm_curves`); the verdict comes from the share of samples for which it holds,
with a bootstrap over sentences (positions of one sentence are not independent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mechprobe.models.types import Model


def load_sentences(path: str | None) -> list[str]:
    """The sentences of the many-sample run: a file's lines, or the shipped set.

    Example:
        >>> len(load_sentences(None))
        54
    """
    from mechprobe.corpus.sentences import default_sentences, read_sentences

    return read_sentences(path) if path else default_sentences()


def many_samples(
    config: Any, model: Model, sentences: list[str] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Norm-ratio curves over every sentence and position, per scale factor, and the verdicts.

    Example:
        >>> from mechprobe.experiments.replace import ReplaceConfig, resolve
        >>> arrays, summary = many_samples(resolve(ReplaceConfig(n_boot=100),
        ...                                        model_shape(model)), model)
        >>> summary["scale_10"]["n_samples"] > 300
        True
    """
    import torch

    from mechprobe.activations import collect
    from mechprobe.hooks import FINAL_NORM, residual_names
    from mechprobe.interventions import ScaleOutput, intervention_hooks
    from mechprobe.models.registry import model_shape
    from mechprobe.stats.norm_curves import scaling_summary
    from mechprobe.validate import check_context

    tok, shape = model.tokenizer, model_shape(model)
    if sentences is None:
        sentences = load_sentences(config.sentences)
    ids = [tok(s, add_special_tokens=False).input_ids for s in sentences]
    width = max(len(i) for i in ids)
    check_context(width, shape.n_ctx, "the longest sentence")
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    tokens = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
    valid = np.zeros(tokens.shape, dtype=bool)
    for row, i in enumerate(ids):
        valid[row, 1 : len(i)] = True  # positions 1 .. len-1 (padding and the first token out)
    names = [*residual_names(shape.n_layers), FINAL_NORM]

    def norms(interventions: list[Any]) -> np.ndarray:
        hooks = intervention_hooks(model, interventions, width)
        acts = collect(model, tokens, names, hooks=hooks, progress=False)
        return torch.stack([acts[n].double().norm(dim=-1) for n in names], dim=-1).numpy()

    base = norms([])
    sentence_of = np.nonzero(valid)[0]
    arrays: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {"n_sentences": len(sentences), "positions": "1 .. len-1"}
    for f in config.scales:
        name = f"scale_{f:g}"
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (norms([ScaleOutput(config.scale_layer, float(f))]) / base)[valid]
        res = scaling_summary(
            ratio[:, :-1], ratio[:, -1], config.scale_layer, float(f), groups=sentence_of,
            n_boot=config.n_boot, seed=config.seed,
        )  # fmt: skip
        for key in ("median", "low", "high"):
            arrays[f"{name}_many_{key}"] = res[key]
        arrays[f"{name}_many_holds"] = res["holds"]
        summary[name] = {
            k: res[k]
            for k in ("fraction", "fraction_low", "fraction_high", "n_samples", "n_holds", "factor")
        }
    return arrays, summary
