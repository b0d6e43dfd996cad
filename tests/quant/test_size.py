"""On a model trained here (real train sample, tiny_cpu), int6 + the best compressor is at most
0.8x the bytes of int8 + zlib for the same weights, and both reload exactly."""

from __future__ import annotations

import pytest
import safetensors.torch

from pgolf.export.container import decode_artifact, encode_artifact
from pgolf.presets import build_config
from pgolf.quant.int8 import dequantize
from pgolf.quant.policy import quantize_state_dict_policy
from pgolf.train.loop import CHECKPOINT_NAME, train


@pytest.fixture(scope="module")
def trained_state(shared_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = build_config(
        "tiny_cpu",
        [
            f"DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
            f"VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
            f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
            "ITERATIONS=15", "PGOLF_COMPILE=0", "VAL_MAX_TOKENS=4096", "TRAIN_LOG_EVERY=0", "RUN_ID=q",
        ],
        environ={},
    )
    train(cfg, runs_dir=runs, echo=False)
    return safetensors.torch.load_file(str(runs / "q" / CHECKPOINT_NAME))


def test_int6_best_compressor_is_at_most_0_8x_of_int8_zlib(trained_state):
    # small=0 quantizes every matrix (tiny_cpu's are all under the reference's 65,536 threshold).
    int8 = quantize_state_dict_policy(trained_state, "int8:pct,small=0")
    int6 = quantize_state_dict_policy(trained_state, "int6:mse,small=0")
    blob8 = encode_artifact(int8, {}, "zlib")
    blob6 = encode_artifact(int6, {}, "auto")
    assert len(blob6) <= 0.8 * len(blob8), (len(blob6), len(blob8))
    for q, blob in ((int8, blob8), (int6, blob6)):
        loaded = dequantize(decode_artifact(blob, "t")[0])
        for name, t in dequantize(q).items():
            assert t.equal(loaded[name]), name
