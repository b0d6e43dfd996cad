"""Index plans for evaluation: which inputs each window reads and which targets it scores.

Target ``t`` is the prediction of ``tokens[t + 1]`` from ``tokens[..t]``; a stream of ``n + 1``
tokens has ``n`` targets. A :class:`Window` reads inputs ``tokens[start:end]`` and scores targets
``[score_from, end)``. The plans here are pure index arithmetic, so their defining properties
(every target scored exactly once, each with the longest context the plan allows) are tested
without a model.

Sliding windows (stride ``s``, context ``L``): the first window of a segment scores its first
``min(L, len)`` targets; every later window scores the next ``s`` targets (fewer at the very end:
the final partial window is kept, never dropped) and reaches back as far as ``L`` inputs allow, so
each target sees at least ``L - s + 1`` tokens once the segment is longer than ``L``.
``s == L`` gives back exactly the standard non-overlapping windows.

Document isolation splits the stream at every BOS: a segment starts at each BOS input position and
its windows never read before it, so the context restarts at each document start. The target
that predicts the next document's BOS belongs to the document it ends. Each segment keeps the
stride grid to its last window (which then reads fewer inputs): reaching back further because the
document ended would make its last targets' context depend on where the next BOS is, a later token
(and whether a segment is the stream's last depends on later BOS too). Without isolation the one
segment's final window reaches back a full ``L``: its end is the stream's, no token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pgolf.errors import PgolfError


@dataclass(frozen=True)
class Window:
    start: int  # first input position
    end: int  # one past the last input position (= one past the last scored target)
    score_from: int  # first scored target

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def scored(self) -> int:
        return self.end - self.score_from


def segments(tokens: np.ndarray, bos_id: int | None) -> list[tuple[int, int]]:
    """Target ranges ``[a, b)`` covering all targets; split at BOS inputs when ``bos_id`` is given."""
    n = int(tokens.shape[0]) - 1
    if n <= 0:
        raise PgolfError(f"validation data has {tokens.shape[0]} tokens; at least 2 are needed")
    if bos_id is None:
        return [(0, n)]
    starts = np.flatnonzero(tokens[:n] == bos_id).tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], n]
    return list(zip(starts, ends))


def sliding_windows(seg_start: int, seg_end: int, seq_len: int, stride: int, on_grid: bool = False) -> Iterator[Window]:
    """Windows scoring every target of ``[seg_start, seg_end)`` exactly once, in order.

    ``on_grid``: the last window starts where the stride grid puts it, whatever the segment's length
    (a document's end is a later token's position).
    """
    if seq_len <= 0 or not 0 < stride <= seq_len:
        raise PgolfError(f"sliding window: need 0 < stride ({stride}) <= seq_len ({seq_len})")
    first_end = min(seg_start + seq_len, seg_end)
    yield Window(seg_start, first_end, seg_start)
    scored_to = first_end
    while scored_to < seg_end:
        end = min(scored_to + stride, seg_end)
        reach = scored_to + stride if on_grid else end
        yield Window(max(seg_start, reach - seq_len), end, scored_to)
        scored_to = end


def plan(tokens: np.ndarray, seq_len: int, stride: int, bos_id: int | None = None) -> list[Window]:
    """All windows for the stream, in stream order (``bos_id`` given: document-isolated)."""
    isolated = bos_id is not None
    return [w for a, b in segments(tokens, bos_id) for w in sliding_windows(a, b, seq_len, stride, on_grid=isolated)]


def target_context_lengths(windows: list[Window], n_targets: int) -> np.ndarray:
    """Inputs each target is predicted from (itself included); -1 where a target is never scored."""
    ctx = np.full(n_targets, -1, dtype=np.int64)
    for w in windows:
        t = np.arange(w.score_from, w.end)
        ctx[t] = t - w.start + 1
    return ctx
