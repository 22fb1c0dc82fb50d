import numpy as np
import pytest
import torch

from mechprobe.units import QKVLayout, heads_to_units, layout_of, qkv_units, units_to_heads


@pytest.mark.unit
@pytest.mark.parametrize("shape", [(3, 4, 16), (2, 5, 4, 16), (1, 9, 64), (2, 7, 3, 64)])
def test_split_merge_round_trip_is_exact(shape):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen)
    n_heads = shape[-2]
    assert torch.equal(units_to_heads(heads_to_units(x), n_heads), x)
    flat = heads_to_units(x)
    assert torch.equal(heads_to_units(units_to_heads(flat, n_heads)), flat)


@pytest.mark.unit
def test_heads_to_units_is_head_major():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # batch head d_head
    flat = heads_to_units(x)
    for h in range(3):
        assert torch.equal(flat[:, h * 4 : (h + 1) * 4], x[:, h])


@pytest.mark.unit
def test_layout_gpt2_and_gqa():
    gpt2 = QKVLayout(n_heads=20, n_kv_heads=20, d_head=64)
    assert gpt2.n_units == 3840  # GPT-2 large, as in the course
    assert gpt2.slice("v") == slice(2560, 3840)
    smol = QKVLayout(n_heads=9, n_kv_heads=3, d_head=64)
    assert (smol.size("q"), smol.size("k"), smol.size("v")) == (576, 192, 192)
    assert [smol.kv_head_of(h) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    m = smol.unit_map()
    assert m["component"][576] == 1 and m["head"][576] == 0 and m["dim"][576 + 65] == 1
    assert m["head"][576 + 64] == 1
    with pytest.raises(ValueError):
        smol.unit_map(fused_c_attn=True)


@pytest.mark.unit
def test_qkv_units_equal_c_attn_columns(tiny_model, tiny_reference):
    """Q|K|V flat units from the TL per-head hooks are exactly GPT-2's c_attn output columns."""
    hf, tok = tiny_reference
    tokens = torch.tensor(
        [tok("Nobody can say the river never floods", add_special_tokens=False).input_ids]
    )
    seen = {}
    handle = hf.transformer.h[1].attn.c_attn.register_forward_hook(
        lambda m, a, o: seen.__setitem__("c_attn", o.detach())
    )
    try:
        with torch.inference_mode():
            hf(tokens)
    finally:
        handle.remove()
    _, cache = tiny_model.run_with_cache(tokens)
    pos = 3
    units = qkv_units(*(cache[f"blocks.1.attn.hook_{c}"][:, pos] for c in "qkv"))
    layout = layout_of(tiny_model)
    cols = layout.unit_map(fused_c_attn=True)["c_attn_column"]
    np.testing.assert_allclose(
        units[0].numpy(), seen["c_attn"][0, pos, cols].numpy(), atol=1e-5, rtol=0
    )
