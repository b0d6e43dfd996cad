"""Artifact bytes against the reference's own export (its quantizer, torch.save, zlib 9) of the same
weights, a model trained here (real train sample, tiny_cpu): int6 + the best compressor is at most
0.8x of it and reloads exactly; the int8 policy (the reference's values) is no larger than it.

The reference's scale floor of 1/127 makes its int8 coarse on weights under 1 in magnitude (all of
these): with every matrix quantized (keep-float threshold 0) it takes about the bytes of int6:mse,
at a larger squared error; hence the comparison with the artifact the reference actually writes."""

from __future__ import annotations

import io
import zlib

import pytest
import safetensors.torch
import torch

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


def reference_int8_zlib_bytes(ref, state) -> int:
    """The bytes of the reference's ``final_model.int8.ptz`` for ``state``: its quantizer, torch.save,
    zlib level 9 (reference train_gpt.py, lines 1075-1080)."""
    obj, _ = ref.quantize_state_dict_int8(state)
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(zlib.compress(buf.getvalue(), level=9))


@pytest.fixture()
def reference_bytes(oracle, trained_state) -> int:
    return reference_int8_zlib_bytes(oracle("reference/train_gpt.py"), trained_state)


def test_int6_best_compressor_is_at_most_0_8x_of_the_reference_artifact(trained_state, reference_bytes):
    # small=0 quantizes every matrix (tiny_cpu's are all under the reference's 65,536 threshold).
    int6 = quantize_state_dict_policy(trained_state, "int6:mse,small=0")
    blob6 = encode_artifact(int6, {}, "auto")
    assert len(blob6) <= 0.8 * reference_bytes, (len(blob6), reference_bytes)
    loaded = dequantize(decode_artifact(blob6, "t")[0])
    for name, t in dequantize(int6).items():
        assert t.equal(loaded[name]), name


def test_int8_policy_artifact_is_no_larger_than_the_reference_ptz(trained_state, reference_bytes):
    # The same stored values (pgolf's int8 is the reference's quantizer bit for bit): the container
    # (safetensors + 22-byte header, zlib 9) must not cost more than torch.save + zlib 9.
    blob8 = encode_artifact(quantize_state_dict_policy(trained_state, "int8"), {}, "zlib")
    assert len(blob8) <= reference_bytes, (len(blob8), reference_bytes)
