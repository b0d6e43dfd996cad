"""The recompilation watch notices a forced recompile (new shape under dynamic=False) and nothing else."""

from __future__ import annotations

import pytest
import torch

from pgolf.bench.recompile import RecompileWatch
from pgolf.errors import PgolfError
from pgolf.model.gpt import build_model
from pgolf.presets import tiny_cpu


@pytest.fixture(scope="module")
def compiled_tiny_gpt():
    torch._dynamo.reset()
    cfg = tiny_cpu().model
    cfg.vocab_size = 64
    # the watch counts TorchDynamo graphs, which do not depend on the code generator: the eager
    # backend keeps this test to seconds where inductor on CPU spends most of a minute in the C compiler
    return torch.compile(build_model(cfg), dynamic=False, fullgraph=True, backend="eager")


def batch(rows: int, seq_len: int = 16):
    g = torch.Generator().manual_seed(rows)
    x = torch.randint(0, 64, (rows, seq_len), generator=g)
    return x, torch.roll(x, -1, 1)


def test_same_shapes_after_warm_up_compile_nothing(compiled_tiny_gpt):
    watch = RecompileWatch()
    for _ in range(2):  # warm-up: the second call recompiles once more, guarding on the filled RoPE cache
        compiled_tiny_gpt(*batch(2)).backward()
    assert watch.compiled >= 1
    with watch.forbid("the timed run"):
        for _ in range(3):
            compiled_tiny_gpt(*batch(2)).backward()
    assert watch.during_forbidden == 0


def test_a_new_shape_in_the_timed_run_is_an_error(compiled_tiny_gpt):
    for _ in range(2):
        compiled_tiny_gpt(*batch(2)).backward()
    watch = RecompileWatch()
    with pytest.raises(PgolfError, match="1 torch.compile recompilation\\(s\\) during the timed run") as err:
        with watch.forbid("the timed run"):
            compiled_tiny_gpt(*batch(3)).backward()  # a ragged last batch, as an eval tail would give
    assert watch.during_forbidden == 1
    assert "\n" not in str(err.value)
