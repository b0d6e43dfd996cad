"""Recompilation watch: after the warm-up has run every graph variant, a timed run must compile nothing.

A compiled step that recompiles in the middle of a timed run (a new input shape under
``dynamic=False``, a flipped flag the graph guards on) silently spends seconds compiling inside the
measurement. :class:`RecompileWatch` counts the graphs TorchDynamo builds, process-wide, through its
``unique_graphs`` counter (every first compile and every recompile adds one); :meth:`RecompileWatch.forbid`
turns any new graph inside a block into a :class:`~pgolf.errors.PgolfError`. Run with
``TORCH_LOGS=recompiles`` to see which guard failed.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from pgolf.errors import PgolfError


def graphs_compiled() -> int:
    """Graphs TorchDynamo has compiled in this process so far (first compiles and recompiles)."""
    from torch._dynamo.utils import counters  # private, but the counter torch's own tests read

    return int(counters["stats"]["unique_graphs"])


class RecompileWatch:
    """Counts compiled graphs from its creation; :meth:`forbid` fails a block that compiles any."""

    def __init__(self) -> None:
        self._start = graphs_compiled()
        self.during_forbidden = 0

    @property
    def compiled(self) -> int:
        return graphs_compiled() - self._start

    @contextlib.contextmanager
    def forbid(self, what: str) -> Iterator[None]:
        before = graphs_compiled()
        yield
        new = graphs_compiled() - before
        self.during_forbidden += new
        if new:
            raise PgolfError(
                f"{new} torch.compile recompilation(s) during {what}: the warm-up missed a graph variant "
                "(rerun with TORCH_LOGS=recompiles to see the failed guard)"
            )

