"""R35's whole-stream byte shuffle (PGOLF_STREAM_SHUFFLE): pgolf's bytes are R35's own
``_byte_shuffle`` bytes, R35's ``_byte_unshuffle`` inverts them, and an artifact written with it
round-trips and is what R35 compresses (its ``_compress``: shuffle, then brotli)."""

from __future__ import annotations

import brotli
import pytest
import torch

from pgolf.config import Config
from pgolf.export.bitpack import shuffle_stream, unshuffle_stream
from pgolf.export.container import HEADER_BYTES, decode_artifact, encode_artifact, encode_payload
from pgolf.presets import build_config
from pgolf.quant.int8 import dequantize
from pgolf.quant.policy import quantize_state_dict_policy

R35 = "R35_sp8192_recur_parres_ttt/train_gpt.decompressed.py"


@pytest.fixture(scope="module")
def r35(oracle):
    return oracle(R35)


@pytest.mark.parametrize("size", [0, 1, 2, 5, 4096, 4097])
@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_shuffle_is_r35s_byte_for_byte_and_r35_undoes_it(r35, size, stride):
    data = bytes((i * 37 + i // 7) % 256 for i in range(size))
    mine = shuffle_stream(data, stride)
    assert mine == r35._byte_shuffle(data, stride)
    assert r35._byte_unshuffle(mine) == data
    assert unshuffle_stream(r35._byte_shuffle(data, stride)) == data


def _state():
    g = torch.Generator().manual_seed(0)
    return {"blocks.0.mlp.fc.weight": torch.randn(256, 512, generator=g) * 0.05, "blocks.0.attn_scale": torch.ones(512)}


def test_an_artifact_with_the_stream_shuffle_holds_what_r35_compresses_and_round_trips(r35):
    q = quantize_state_dict_policy(_state(), "int6:sd12.85,keep=fp16")
    blob = encode_artifact(q, {"k": 1}, "brotli", stream_shuffle=2)
    # after pgolf's header: exactly R35's _compress of pgolf's payload
    assert blob[HEADER_BYTES:] == r35._compress(encode_payload(q, {"k": 1}), "brotli")
    assert r35._byte_unshuffle(brotli.decompress(blob[HEADER_BYTES:])) == encode_payload(q, {"k": 1})
    loaded, meta = decode_artifact(blob, "shuffled.ptz")
    assert meta == {"k": 1}
    for name, t in dequantize(q).items():
        assert torch.equal(dequantize(loaded)[name], t)
    # and a file written without it still reads (no framing, nothing to undo)
    assert decode_artifact(encode_artifact(q, {"k": 1}, "brotli"), "plain.ptz")[1] == {"k": 1}


def test_r35s_preset_switches_it_on_and_the_default_is_off():
    assert build_config("sp8192_recur_parres_ttt", environ={}).quant.stream_shuffle == 2
    assert Config().quant.stream_shuffle == 0
    assert build_config("baseline", environ={"PGOLF_STREAM_SHUFFLE": "2"}).quant.stream_shuffle == 2


def test_a_reader_told_there_is_no_shuffle_takes_the_payload_as_it_is():
    q = quantize_state_dict_policy(_state(), "int8")
    plain = encode_artifact(q, {"k": 1}, "zlib")
    assert decode_artifact(plain, "plain.ptz", stream_shuffled=False)[1] == {"k": 1}
    # a shuffled payload (BSHF framing) reads only where the shuffle is undone: the flag must be right
    framed = encode_artifact(q, {"k": 1}, "zlib", stream_shuffle=2)
    assert decode_artifact(framed, "framed.ptz")[1] == {"k": 1}
    with pytest.raises(Exception):
        decode_artifact(framed, "framed.ptz", stream_shuffled=False)


def test_training_reads_back_the_shuffled_artifact_it_wrote(shared_data, tmp_path, stride=2):
    from pgolf.train.loop import train

    def run(shuffle: int) -> dict:
        overrides = [
            f"DATA_PATH={shared_data / 'datasets' / 'fineweb10B_sp1024_trainsample'}",
            f"VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
            f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}",
            "ITERATIONS=2", "VAL_MAX_TOKENS=2048", "TRAIN_LOG_EVERY=0", f"PGOLF_STREAM_SHUFFLE={shuffle}", f"RUN_ID=s{shuffle}",
        ]
        return train(build_config("tiny_cpu", overrides, environ={}), runs_dir=tmp_path, echo=False)

    shuffled, plain = run(stride), run(0)
    assert shuffled["post_quant"] == plain["post_quant"]  # the shuffle is lossless, and was undone
