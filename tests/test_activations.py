import pytest
import torch

from mechprobe.activations import collect, collect_units, is_causal
from mechprobe.errors import MechprobeError
from mechprobe.hooks import stop_layer, temporary_hooks
from mechprobe.reference import capture_reference
from tests.helpers import assert_close


@pytest.fixture(scope="module")
def tokens(tiny_reference):
    gen = torch.Generator().manual_seed(7)
    return torch.randint(0, 50257, (6, 15), generator=gen)


@pytest.mark.unit
def test_collect_one_position_per_row_matches_hf(tiny_model, tiny_reference, tokens):
    positions = torch.tensor([0, 3, 14, 7, 7, 2])
    names = ["blocks.1.attn.hook_k", "blocks.0.mlp.hook_pre", "blocks.1.hook_resid_post"]
    acts = collect(tiny_model, tokens, names, positions=positions, batch_size=4)
    ref = capture_reference(tiny_reference[0], tokens)
    rows = torch.arange(6)
    for name in names:
        assert_close(acts[name], ref[name][rows, positions], atol=1e-5, msg=name)


@pytest.mark.unit
def test_collect_all_positions_and_batching_invariance(tiny_model, tokens):
    a = collect(tiny_model, tokens, ["blocks.0.attn.hook_v"], batch_size=6)
    b = collect(tiny_model, tokens, ["blocks.0.attn.hook_v"], batch_size=1)
    assert a["blocks.0.attn.hook_v"].shape == (6, 15, 4, 16)
    assert_close(a["blocks.0.attn.hook_v"], b["blocks.0.attn.hook_v"], atol=1e-6)


@pytest.mark.unit
def test_collect_units_layout(tiny_model, tiny_reference, tokens):
    units = collect_units(tiny_model, tokens, positions=5, layers=[1, 0], batch_size=4)
    assert units["qkv"].shape == (6, 2, 192) and units["mlp"].shape == (6, 2, 256)
    ref = capture_reference(tiny_reference[0], tokens)
    q = ref["blocks.1.attn.hook_q"][:, 5].reshape(6, -1)
    v = ref["blocks.0.attn.hook_v"][:, 5].reshape(6, -1)
    assert_close(units["qkv"][:, 0, :64], q, atol=1e-5)
    assert_close(units["qkv"][:, 1, 128:], v, atol=1e-5)
    assert_close(units["mlp"][:, 1], ref["blocks.0.mlp.hook_pre"][:, 5], atol=1e-5)


@pytest.mark.unit
def test_collect_caches_only_requested_hooks(tiny_model, tokens):
    acts = collect(tiny_model, tokens, ["blocks.0.attn.hook_q"], positions=1)
    assert list(acts) == ["blocks.0.attn.hook_q"]
    assert acts["blocks.0.attn.hook_q"].shape == (6, 4, 16)


@pytest.mark.unit
def test_unknown_hook_is_an_error(tiny_model, tokens):
    with pytest.raises(MechprobeError, match="unknown hook"):
        collect(tiny_model, tokens, ["blocks.0.attn.hook_nope"])
    with pytest.raises(MechprobeError, match="unknown hook"):
        with temporary_hooks(tiny_model, [("blocks.9.attn.hook_q", lambda a, h: a)]):
            pass


@pytest.mark.unit
def test_bad_positions_are_errors(tiny_model, tokens):
    with pytest.raises(MechprobeError, match="positions"):
        collect(tiny_model, tokens, ["blocks.0.attn.hook_q"], positions=15)
    with pytest.raises(MechprobeError, match="entries"):
        collect(tiny_model, tokens, ["blocks.0.attn.hook_q"], positions=[1, 2])


@pytest.mark.unit
def test_temporary_hooks_always_removed(tiny_model, tokens):
    calls = []

    def hook(act, hook):
        calls.append(1)
        return act

    with pytest.raises(RuntimeError), temporary_hooks(tiny_model, [("blocks.0.attn.hook_q", hook)]):
        tiny_model(tokens[:1])
        raise RuntimeError("boom")
    tiny_model(tokens[:1])
    assert len(calls) == 1


@pytest.mark.unit
def test_stop_layer():
    assert stop_layer(["blocks.3.attn.hook_q", "blocks.1.mlp.hook_pre"], 30) == 4
    assert stop_layer(["blocks.29.hook_resid_post"], 30) is None
    assert stop_layer(["ln_final.hook_out"], 30) is None


class _FedLengths:
    """Records the sequence length of every forward pass (a torch hook on the embedding)."""

    def __init__(self, model):
        self.lengths: list[int] = []
        self.handle = model.embed.register_forward_hook(
            lambda mod, inp, out: self.lengths.append(out.shape[1])
        )

    def __enter__(self):
        return self.lengths

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.unit
def test_cut_forward_ends_each_batch_at_its_last_kept_position(tiny_model, tiny_reference, tokens):
    positions = torch.tensor([0, 3, 14, 7, 7, 2])
    names = ["blocks.0.attn.hook_q", "blocks.1.attn.hook_v", "blocks.1.mlp.hook_pre"]
    kw = {"positions": positions, "batch_size": 2}
    with _FedLengths(tiny_model) as fed:
        cut = collect(tiny_model, tokens, names, **kw)
    assert fed == [4, 15, 8]  # rows (0, 3), (14, 7), (7, 2): up to max position + 1
    with _FedLengths(tiny_model) as fed:
        whole = collect(tiny_model, tokens, names, **kw, truncate=False)
    assert fed == [15, 15, 15]
    ref = capture_reference(tiny_reference[0], tokens)  # HF on the whole rows
    rows = torch.arange(6)
    for name in names:
        assert_close(cut[name], ref[name][rows, positions], atol=1e-5, msg=name)
        assert_close(cut[name], whole[name], atol=1e-6, msg=name)


@pytest.mark.unit
def test_no_cut_with_interventions_logits_or_all_positions(tiny_model, tokens):
    name = "blocks.0.attn.hook_k"
    with _FedLengths(tiny_model) as fed:
        collect(tiny_model, tokens, [name], positions=2, hooks=[(name, lambda act, hook: act)])
        collect(tiny_model, tokens, [name], positions=2, logits=True)
        collect(tiny_model, tokens, [name])
        collect_units(tiny_model, tokens, positions=2, layers=[0], truncate=False)
        collect_units(tiny_model, tokens, positions=2, layers=[0])
    assert fed == [15, 15, 15, 15, 3]


@pytest.mark.unit
def test_cut_keeps_interventions_effect(tiny_model, tokens):
    # With hooks the rows stay whole: a hook reading a position after the kept one still works.
    seen = []

    def hook(act, hook):
        seen.append(act[:, 12].clone())
        return act

    name = "blocks.0.attn.hook_q"
    acts = collect(tiny_model, tokens, [name], positions=1, hooks=[(name, hook)])
    assert acts[name].shape == (6, 4, 16) and seen[0].shape == (6, 4, 16)


@pytest.mark.unit
def test_is_causal(tiny_model):
    from types import SimpleNamespace

    assert is_causal(tiny_model)
    assert not is_causal(SimpleNamespace(original_model=torch.nn.Linear(2, 2)))
    assert not is_causal(SimpleNamespace())


@pytest.mark.integration
def test_smollm2_cut_forward_equals_whole_windows(smol_model, shared_text):
    from mechprobe.experiments.negation import NegationConfig
    from mechprobe.experiments.probe_samples import take_samples

    config = NegationConfig(text=str(shared_text))
    windows = torch.as_tensor(take_samples(config, smol_model.tokenizer).windows)[:12]
    layers = [0, 14, 29]
    with _FedLengths(smol_model) as fed:
        cut = collect_units(smol_model, windows, config.context_pre, layers, batch_size=6)
        whole = collect_units(
            smol_model, windows, config.context_pre, layers, batch_size=6, truncate=False
        )
    pre, n_tok = config.context_pre, windows.shape[1]
    assert fed == [pre + 1, pre + 1, n_tok, n_tok]
    for fam in ("qkv", "mlp"):
        scale = whole[fam].abs().max().item()
        assert_close(cut[fam], whole[fam], atol=1e-6 * scale, msg=fam)  # float32 rounding
