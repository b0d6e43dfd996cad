"""A tiny training run with USE_GPTQ and LQER_ENABLED: Hessians come from training batches right
after the loop, and the artifact on disk holds exactly the quantized model computed in memory."""

from __future__ import annotations

import torch

from pgolf.export.loading import load_weights
from pgolf.export.container import read_artifact
from pgolf.presets import build_config
from pgolf.quant.gptq import TIED_EMBED_NAME
from pgolf.quant.int8 import dequantize
from pgolf.quant.policy import quantize_for_export
from pgolf.train.loop import ARTIFACT_NAME, compile_warmup, export_and_score, run_training, setup

STEPS = 6
CALIBRATION_BATCHES = 2


class CountingLoader:
    """Wraps the training loader and counts batches drawn."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def next_batch(self, *args):
        self.calls += 1
        return self.inner.next_batch(*args)


def test_gptq_training_run_exports_the_in_memory_quantized_model(shared_data, tmp_path):
    data = shared_data / "datasets"
    cfg = build_config("tiny_cpu", [
        f"DATA_PATH={data / 'fineweb10B_sp1024_trainsample'}",
        f"VAL_FILES={data / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
        f"ITERATIONS={STEPS}", "VAL_MAX_TOKENS=2048", "TRAIN_LOG_EVERY=0", "RUN_ID=g",
        "USE_GPTQ=1", f"GPTQ_CALIBRATION_BATCHES={CALIBRATION_BATCHES}", "LQER_ENABLED=1", "LQER_TOP_K=2",
        "PGOLF_QUANT_SCHEME=embed=int6:sd12,*=int4,small=4096", "PGOLF_COMPRESSOR=zstd",
    ], environ={})
    s = setup(cfg, tmp_path, echo=False)
    compile_warmup(s)
    s.loader = CountingLoader(s.loader)
    stats = run_training(s)
    # Calibration drew exactly GPTQ_CALIBRATION_BATCHES training batches after the STEPS steps.
    assert s.loader.calls == STEPS * s.grad_accum_steps + CALIBRATION_BATCHES
    assert TIED_EMBED_NAME in stats.hessians and stats.hessian_time_ms > 0
    float_state = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
    export_and_score(s, stats.hessians)
    path = tmp_path / "g" / ARTIFACT_NAME
    in_memory = quantize_for_export(float_state, cfg.quant, stats.hessians)
    on_disk, _ = read_artifact(path)
    assert sum(e.lqer is not None for e in on_disk) == 2
    loaded, _ = load_weights(path)
    expected = dequantize(in_memory)
    assert loaded.keys() == expected.keys()
    for name, t in expected.items():
        assert t.dtype == loaded[name].dtype and torch.equal(t, loaded[name]), name
    # GPTQ really rounded differently from round-to-nearest, embedding included.
    rtn = quantize_for_export(float_state, cfg.quant, None, gptq=False, lqer=False)
    assert not torch.equal(rtn.entry(TIED_EMBED_NAME).values, in_memory.entry(TIED_EMBED_NAME).values)
    log = (tmp_path / "g" / "train.log").read_text()
    assert "gptq:collected" in log and "from train data" in log
