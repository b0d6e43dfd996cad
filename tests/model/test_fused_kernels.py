"""FUSED_CE / FUSED_MLP in the model: the same training loss and gradients as the unfused code,
evaluation untouched, compiled without recompiles, and clear refusals. The kernels run in Triton's
CPU interpreter here (tests/conftest.py), on the GPU in tests/gpu/test_fused_kernels_gpu.py."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

from pgolf.bench.recompile import RecompileWatch
from pgolf.errors import PgolfError
from pgolf.kernels import support
from pgolf.model import fused as fused_module
from pgolf.model.fused import use_fused_kernels
from pgolf.model.gpt import build_model
from pgolf.presets import build_config
from pgolf.quant.lowbit import FAMILY_INT, Scheme, fake_quantize

pytest.importorskip("triton", reason="triton is not installed (it comes with the dev extra on Linux x86-64)")
pytestmark = pytest.mark.skipif(
    not support.triton_interpreting(),
    reason="runs the kernels on CPU tensors in Triton's interpreter (tests/conftest.py sets it without CUDA); "
           "tests/gpu/test_fused_kernels_gpu.py covers CUDA")


def model_pair(*overrides: str, seed: int = 0):
    cfg = build_config("tiny_cpu", ["MLP_ACTIVATION=leaky_relu2", *overrides], environ={})
    torch.manual_seed(seed)
    plain = build_model(cfg.model)
    for p in plain.parameters():  # the zero-initialised projections would hide the MLP's gradients
        torch.nn.init.normal_(p, std=0.05)
    fused = copy.deepcopy(plain)
    use_fused_kernels(fused, ce=True, mlp=True, device="cpu")
    return cfg, plain, fused


def batch(cfg, rows=2, seq=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.model.vocab_size, (rows, seq), generator=g) for _ in range(2)]


def loss_and_grads(model, ids, targets):
    model.zero_grad()
    loss = model(ids, targets)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def assert_same_training_step(plain, fused, ids, targets):
    """The fused model's loss and every gradient equal the unfused model's; returns the fused loss."""
    want_loss, want_grads = loss_and_grads(plain, ids, targets)
    got_loss, got_grads = loss_and_grads(fused, ids, targets)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    assert len(got_grads) == len(want_grads)
    for got, want in zip(got_grads, want_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    return got_loss


@pytest.mark.parametrize("extra", [(), ("Z_LOSS=0.001",), ("MLP_ACTIVATION=relu2",)])
def test_training_loss_and_gradients_match_the_unfused_model(extra):
    cfg, plain, fused = model_pair(*extra)
    ids, targets = batch(cfg)
    assert_same_training_step(plain, fused, ids, targets)


def test_qat_fake_quantization_reaches_the_fused_mlp():
    cfg, plain, fused = model_pair()
    # int4 per row on every MLP matrix (the tiny model's are below the default policy's size floor)
    for model in (plain, fused):
        for block in model.blocks:
            for linear in (block.mlp.fc, block.mlp.proj):
                linear.weight_fake_quant = partial(fake_quantize, scheme=Scheme(FAMILY_INT, bits=4))
    ids, targets = batch(cfg)
    got_loss = assert_same_training_step(plain, fused, ids, targets)
    for block in fused.blocks:
        block.mlp.fc.weight_fake_quant = None
    assert abs(loss_and_grads(fused, ids, targets)[0] - got_loss) > 1e-4


def test_evaluation_does_not_use_the_kernels(monkeypatch):
    cfg, plain, fused = model_pair()
    for name in ("ce", "mlp"):
        monkeypatch.setitem(fused_module._kernels, name, lambda *a: pytest.fail(f"fused {name} ran in evaluation"))
    plain.eval(), fused.eval()
    ids, targets = batch(cfg)
    with torch.no_grad():
        torch.testing.assert_close(fused(ids, targets, reduction="none"), plain(ids, targets, reduction="none"))
        torch.testing.assert_close(fused(ids, targets), plain(ids, targets))


def test_the_switch_keeps_the_weights_and_their_keys():
    _, plain, fused = model_pair()
    assert isinstance(fused, fused_module.FusedLossGPT)
    assert all(isinstance(block.mlp, fused_module.FusedMLP) for block in fused.blocks)
    assert list(fused.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fused.state_dict().values(), plain.state_dict().values()))


def test_a_compiled_fused_model_matches_and_compiles_nothing_after_two_warm_up_steps():
    cfg, plain, fused = model_pair("Z_LOSS=0.001")
    # aot_eager traces what matters here (one full graph through the ops' fake and autograd
    # registrations, as inductor would receive it) without inductor's CPU codegen: 38 s -> a few
    compiled = torch.compile(fused, dynamic=False, fullgraph=True, backend="aot_eager")
    ids, targets = batch(cfg)
    for _ in range(2):  # the first call fills the RoPE cache its graph guards on (pgolf.bench.run)
        compiled(ids, targets).backward()
    watch = RecompileWatch()
    with watch.forbid("the compiled fused step"):
        got = compiled(ids, targets)
    torch.testing.assert_close(got.detach(), plain(ids, targets).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("override, flags, message", [
    ("SOFTCAP_TYPE=poly", dict(ce=True, mlp=False), "FUSED_CE=1 fuses the tanh softcap; SOFTCAP_TYPE=poly"),
    ("MLP_ACTIVATION=swiglu", dict(ce=False, mlp=True), "FUSED_MLP=1 fuses relu2 and leaky_relu2; MLP_ACTIVATION=swiglu"),
])
def test_models_without_a_fused_kernel_are_refused(override, flags, message):
    cfg = build_config("tiny_cpu", [override], environ={})
    with pytest.raises(PgolfError, match=message):
        use_fused_kernels(build_model(cfg.model), device="cpu", **flags)


def test_a_cpu_without_the_interpreter_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(PgolfError, match=r"^FUSED_CE=1, FUSED_MLP=1: fused Triton kernels cannot run here: "
                                         r"they need a CUDA device, not cpu"):
        support.require_fused_kernels({"FUSED_CE": True, "FUSED_MLP": True}, "cpu")
    support.require_fused_kernels({"FUSED_CE": False}, "cpu")  # nothing asked, nothing refused


def test_a_missing_triton_is_named(monkeypatch):
    monkeypatch.setattr(support.importlib.util, "find_spec", lambda name: None)
    assert support.fused_kernel_problem("cuda") == "triton is not installed (pip install triton)"
