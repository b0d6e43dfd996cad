"""Config cross-checks of the architecture options: bad combinations fail with one named line."""

from __future__ import annotations

import pytest

from pgolf.errors import PgolfError
from pgolf.presets import build_config


@pytest.mark.parametrize("sets, needle", [
    (["USE_SMEARGATE=1", "SMEAR_GATE_ENABLED=1"], "exclusive"),
    (["ATTN_OUT_GATE_ENABLED=1", "SPARSE_ATTN_GATE_ENABLED=1"], "exclusive"),
    (["ROPE_DIMS=7"], "ROPE_DIMS=7"),
    (["ROPE_DIMS=128"], "ROPE_DIMS=128"),
    (["NUM_LOOPS=2", "LOOP_START=5", "LOOP_END=9"], "NUM_LOOPS=2"),
    (["VE_ENABLED=1", "VE_LAYERS=3,12"], "VE_LAYERS"),
    (["PARALLEL_START_LAYER=9"], "PARALLEL_START_LAYER=9"),
    (["PARALLEL_START_LAYER=5", "GPTJ_PARALLEL=1"], "exclusive"),
    (["BIGRAM_HASH=sum"], "BIGRAM_HASH"),
    (["SOFTCAP_TYPE=cubic"], "SOFTCAP_TYPE"),
    (["Z_LOSS=-1"], "Z_LOSS"),
])
def test_bad_combinations_are_named(sets, needle):
    with pytest.raises(PgolfError, match=needle):
        build_config("baseline", sets, environ={})


def test_reference_env_names_reach_the_fields():
    cfg = build_config("baseline", [], environ={"XSA_LAST_N": "4", "MLP_HIDDEN": "1536", "NUM_LOOPS": "2",
                                                "SMEAR_GATE_ENABLED": "1", "BIGRAM_VOCAB_SIZE": "3072"})
    m = cfg.model
    assert (m.xsa_last_n, m.hidden_size, m.num_loops, m.smear_gate_enabled, m.bigram_vocab_size) == (4, 1536, 2, True, 3072)
