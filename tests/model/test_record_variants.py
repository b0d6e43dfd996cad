"""Record variants the presets need: GPT-J blocks from a layer on (R35), SmearGate v1 as R22 and
PR #1090 wrote it (zero-init gate, applied to the normed embedding)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from techniques_helpers import tiny_cfg, tiny_model, tokens

from pgolf.errors import PgolfError
from pgolf.model.gpt import GPT
from pgolf.presets import build_config


def mlp_reads_attention_input(model: GPT, layer: int) -> bool:
    """Whether block ``layer``'s MLP is fed the very tensor its attention was fed (GPT-J form)."""
    seen = {}
    block = model.blocks[layer]
    h1 = block.attn.register_forward_pre_hook(lambda m, a: seen.update(attn=a[0]))
    h2 = block.mlp.register_forward_pre_hook(lambda m, a: seen.update(mlp=a[0]))
    model.logits(tokens())
    h1.remove()
    h2.remove()
    return torch.equal(seen["attn"], seen["mlp"])


def test_parallel_residual_start_makes_gptj_blocks_from_that_layer_on():
    model = tiny_model(num_layers=4, parallel_residual_start=2)
    assert [mlp_reads_attention_input(model, i) for i in range(4)] == [False, False, True, True]


def test_parallel_residual_start_zero_is_gptj_everywhere_and_minus_one_the_reference():
    x = tokens()
    with torch.no_grad():
        assert torch.equal(tiny_model(parallel_residual_start=0).logits(x), tiny_model(gptj_parallel=True).logits(x))
        assert torch.equal(tiny_model(parallel_residual_start=-1).logits(x), tiny_model().logits(x))


def test_smear_gate_init_sets_the_v1_gate_logit():
    assert torch.equal(GPT(tiny_cfg(use_smeargate=True)).smear.gate, torch.full((64,), 3.0))
    assert torch.equal(GPT(tiny_cfg(use_smeargate=True, smear_gate_init=0.0)).smear.gate, torch.zeros(64))


@pytest.mark.parametrize("smear", [{"use_smeargate": True}, {"smear_gate_enabled": True}])
def test_smear_after_norm_moves_the_gate_behind_the_rms_norm(smear):
    x = tokens()
    before, after = tiny_model(**smear), tiny_model(smear_after_norm=True, **smear)
    with torch.no_grad():
        e = before.tok_emb(x)
        assert torch.allclose(before.embed(x), F.rms_norm(before.smear(e, x), (64,)), atol=1e-6)
        assert torch.allclose(after.embed(x), after.smear(F.rms_norm(e, (64,)), x), atol=1e-6)
        assert not torch.allclose(before.embed(x), after.embed(x), atol=1e-4)


@pytest.mark.parametrize("sets, needle", [
    (["PARALLEL_RESIDUAL_START=9"], "PARALLEL_RESIDUAL_START=9"),
    (["PARALLEL_RESIDUAL_START=-2"], "PARALLEL_RESIDUAL_START=-2"),
    (["PARALLEL_RESIDUAL_START=3", "PARALLEL_START_LAYER=5"], "exclusive"),
])
def test_bad_parallel_residual_settings_are_named(sets, needle):
    with pytest.raises(PgolfError, match=needle):
        build_config("baseline", sets, environ={})
