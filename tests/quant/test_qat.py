"""QAT: the fake-quantized forward is the exported model exactly, it survives torch.compile, and
training with it leaves a smaller quantization gap."""

from __future__ import annotations

import json

import pytest
import torch

from pgolf.model.gpt import build_model
from pgolf.model.layers import CastedLinear
from pgolf.presets import build_config, tiny_cpu
from pgolf.quant.int8 import dequantize
from pgolf.quant.policy import quantize_state_dict_policy
from pgolf.quant.qat import disable_qat, enable_qat, qat_is_on, update_qat

POLICY = "attn=int4g32:mse,mlp=int4g32,small=0"


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_cpu().model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialized projections would quantize trivially
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 1024, (2, 32), generator=g)
    return x, torch.roll(x, -1, dims=1)


def test_qat_forward_equals_the_dequantized_export_exactly():
    model = tiny_model()
    deq = dequantize(quantize_state_dict_policy(model.state_dict(), POLICY))
    names = enable_qat(model, POLICY)
    assert len(names) == 12  # 2 blocks x (c_q, c_k, c_v, proj, fc, mlp.proj)
    modules = dict(model.named_modules())
    for name in names:
        m = modules[name]
        assert torch.equal(m.weight_fake_quant(m.weight), deq[f"{name}.weight"]), name
    # The policy leaves the embedding to the reference rule (fp16): take the linears from the export.
    exported = build_model(tiny_cpu().model)
    exported.load_state_dict({k: deq[k] if k.removesuffix(".weight") in names else v for k, v in model.state_dict().items()})
    x, _ = batch()
    with torch.no_grad():
        assert torch.equal(model.logits(x), exported.logits(x))
    disable_qat(model)
    with torch.no_grad():
        assert not torch.equal(model.logits(x), exported.logits(x))


def test_gradients_flow_straight_through():
    model = tiny_model()
    enable_qat(model, POLICY)
    x, y = batch()
    model(x, y).backward()
    w = model.blocks[0].mlp.fc.weight
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_schedule_switches_on_below_the_threshold_and_stays_on():
    model = tiny_model()
    q = tiny_cpu().quant
    q.scheme, q.qat_enabled, q.late_qat_threshold = POLICY, True, 0.15
    assert not update_qat(model, q, 1.0) and not qat_is_on(model)
    assert update_qat(model, q, 0.1) and qat_is_on(model)
    assert not update_qat(model, q, 0.05) and qat_is_on(model)
    q.qat_enabled = False
    other = tiny_model()
    assert not update_qat(other, q, 0.0) and not qat_is_on(other)


class OneLinear(torch.nn.Module):
    """The smallest model with a policy-matched CastedLinear (compiling a whole GPT takes minutes here)."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Module()])
        self.blocks[0].mlp = torch.nn.Module()
        self.blocks[0].mlp.fc = CastedLinear(64, 128, bias=False)

    def forward(self, x):
        return self.blocks[0].mlp.fc(x)


def test_compiled_forward_changes_when_qat_switches_on():
    # A record once lost QAT to torch.compile constant-folding a class flag: check the compiled
    # model really starts fake-quantizing, bit for bit like eager, once QAT is switched on.
    torch.manual_seed(0)
    model = OneLinear()
    compiled = torch.compile(model, dynamic=False, fullgraph=True)
    x = torch.randn(4, 64)
    with torch.no_grad():
        before = compiled(x)
        assert enable_qat(model, POLICY) == ["blocks.0.mlp.fc"]
        after = compiled(x)
        eager = model(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, eager)


def train_run(shared_data, runs, run_id: str, *extra: str) -> dict:
    from pgolf.train.loop import train

    cfg = build_config(
        "tiny_cpu",
        [
            f"DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
            f"VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
            f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
            "ITERATIONS=25", "VAL_MAX_TOKENS=8192", "TRAIN_LOG_EVERY=0", "PGOLF_COMPILE=0", f"RUN_ID={run_id}",
            f"PGOLF_QUANT_SCHEME={POLICY}", *extra,
        ],
        environ={},
    )
    return train(cfg, runs_dir=runs, echo=False)


def float_bpb(shared_data, run_pgolf, run_dir) -> float:
    code, out, err = run_pgolf([
        "eval", "--checkpoint", f"{run_dir}/checkpoint.safetensors", "--preset", "tiny_cpu",
        "--val", str(shared_data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"),
        "--tokenizer", str(shared_data / "tokenizers" / "fineweb_1024_bpe.model"), "--max-tokens", "8192", "--json",
    ])
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])["val_bpb"]


def test_qat_training_has_a_smaller_quantization_gap(shared_data, tmp_path, run_pgolf):
    # Gap = bpb of the reloaded int4 artifact - bpb of the raw float checkpoint (QAT off), so QAT
    # gets no credit for evaluating its own fake-quantized forward.
    gaps = {}
    for run_id, extra in (("plain", ()), ("qat", ("QAT_ENABLED=1",))):
        results = train_run(shared_data, tmp_path, run_id, *extra)
        gaps[run_id] = results["post_quant"]["val_bpb"] - float_bpb(shared_data, run_pgolf, results["run_dir"])
    assert gaps["qat"] < gaps["plain"], gaps
