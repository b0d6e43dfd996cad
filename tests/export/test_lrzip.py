"""The lrzip codec, which runs only where the ``lrzip`` binary is installed (CI installs it when it can)."""

import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.export.codecs import CODECS, CODEC_IDS, available_codecs, lrzip_available
from pgolf.export.container import decode_artifact, encode_artifact, pack_container, unpack_container
from pgolf.quant.int8 import dequantize
from pgolf.quant.policy import quantize_state_dict_policy

pytestmark = pytest.mark.skipif(not lrzip_available(), reason="the lrzip binary is not installed (apt-get install lrzip)")


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"blocks.0.mlp.fc.weight": torch.randn(64, 96, generator=g) * 0.02, "blocks.0.attn_scale": torch.ones(64)}


def test_lrzip_artifact_round_trips_bit_for_bit():
    q = quantize_state_dict_policy(_state(), "int6")
    loaded, meta = decode_artifact(encode_artifact(q, {"k": 1}, "lrzip"), "lrzip artifact")
    assert meta["k"] == 1
    for name, tensor in dequantize(q).items():
        assert torch.equal(dequantize(loaded)[name], tensor)


def test_lrzip_is_among_the_candidates_of_auto():
    assert "lrzip" in available_codecs()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_lrzip_data_is_a_clear_error(damage):
    raw = CODECS[CODEC_IDS["lrzip"]].compress(bytes(range(256)) * 64)
    broken = raw[: len(raw) // 2] if damage == "truncate" else raw[:16] + b"\x5a" * (len(raw) - 16)
    with pytest.raises(PgolfError, match="lrzip"):
        CODECS[CODEC_IDS["lrzip"]].decompress(broken, 1 << 20, "test.ptz")


def test_lrzip_output_larger_than_the_cap_is_refused():
    raw = CODECS[CODEC_IDS["lrzip"]].compress(b"\0" * 20_000)
    with pytest.raises(PgolfError, match="more than"):
        CODECS[CODEC_IDS["lrzip"]].decompress(raw, 1000, "test.ptz")


def test_container_with_lrzip_checks_its_checksum_before_decompressing():
    blob = bytearray(pack_container(b"payload" * 100, "lrzip"))
    blob[-1] ^= 0xFF
    with pytest.raises(PgolfError):
        unpack_container(bytes(blob), "flipped.ptz")
