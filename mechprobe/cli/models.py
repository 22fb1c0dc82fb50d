"""``mechprobe models``: the names mechprobe knows, whether they load offline, their shapes."""

from __future__ import annotations

from mechprobe.models.registry import KNOWN_MODELS


def models_table() -> str:
    """Return the table printed by ``mechprobe models``.

    Example:
        >>> "smollm2-135m" in models_table()
        True
    """
    head = f"{'name':<14}{'offline':>8}{'layers':>8}{'d_model':>9}{'heads':>7}{'kv':>5}"
    head += f"{'d_head':>8}{'d_mlp':>7}  description"
    lines = [head]
    for m in KNOWN_MODELS.values():
        s = m.shape
        lines.append(
            f"{m.name:<14}{'yes' if m.offline else 'no':>8}{s.n_layers:>8}{s.d_model:>9}"
            f"{s.n_heads:>7}{s.n_kv_heads:>5}{s.d_head:>8}{s.d_mlp:>7}  {m.description}"
        )
    lines.append(
        "Any HuggingFace repo id or local model directory also works (hub ids need a network)."
    )
    return "\n".join(lines)
