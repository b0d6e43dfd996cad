"""Window plans: every target scored exactly once, with the longest context the plan allows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.eval.windows import plan, segments, target_context_lengths


def coverage(windows, n: int) -> np.ndarray:
    counts = np.zeros(n, dtype=np.int64)
    for w in windows:
        counts[w.score_from : w.end] += 1
    return counts


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 400), seq_len=st.integers(1, 64), data=st.data())
def test_every_target_scored_exactly_once_with_maximal_context(n, seq_len, data):
    stride = data.draw(st.integers(1, seq_len))
    tokens = np.arange(n + 1) % 7 + 1  # no BOS
    windows = plan(tokens, seq_len, stride)
    assert sum(w.scored for w in windows) == n
    assert (coverage(windows, n) == 1).all()
    ctx = target_context_lengths(windows, n)
    t = np.arange(n)
    # no window is longer than seq_len, and each reaches back as far as seq_len allows
    assert all(w.length == min(seq_len, w.end) for w in windows)
    assert (ctx <= seq_len).all()
    # the guarantee a stride buys: at least seq_len - stride + 1 inputs (or all before t)
    assert (ctx >= np.minimum(t + 1, seq_len - stride + 1)).all()


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_document_isolation_restarts_context_at_each_bos(data):
    n = data.draw(st.integers(1, 300))
    seq_len = data.draw(st.integers(1, 48))
    stride = data.draw(st.integers(1, seq_len))
    tokens = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n + 1, max_size=n + 1)))
    windows = plan(tokens, seq_len, stride, bos_id=0)
    assert (coverage(windows, n) == 1).all()
    bos_inputs = np.flatnonzero(tokens[:n] == 0)
    segment_ends = {b for _, b in segments(tokens, 0)}
    for w in windows:
        # a window never reads across a document start: any BOS inside it is its first input
        inside = bos_inputs[(bos_inputs > w.start) & (bos_inputs < w.end)]
        assert inside.size == 0
        # and reaches back seq_len unless that would cross it, or it ends its document (on the grid)
        assert w.start == 0 or tokens[w.start] == 0 or w.length == seq_len or w.end in segment_ends


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_document_isolated_contexts_never_depend_on_later_tokens(data):
    """Rewriting tokens[p:] (BOS appearing or vanishing: documents end elsewhere) leaves the context
    of every target before p - 1 as it was: a target's window depends on the tokens before it only."""
    n = data.draw(st.integers(2, 300))
    seq_len = data.draw(st.integers(1, 24))
    stride = data.draw(st.integers(1, seq_len))
    p = data.draw(st.integers(1, n))
    token = st.integers(0, 15)  # BOS (0) one token in 16: documents longer than many windows
    tokens = np.array(data.draw(st.lists(token, min_size=n + 1, max_size=n + 1)))
    rewritten = tokens.copy()
    rewritten[p:] = data.draw(st.lists(token, min_size=n + 1 - p, max_size=n + 1 - p))
    before = target_context_lengths(plan(tokens, seq_len, stride, bos_id=0), n)
    after = target_context_lengths(plan(rewritten, seq_len, stride, bos_id=0), n)
    assert np.array_equal(before[: p - 1], after[: p - 1])


def test_stride_equal_to_seq_len_is_the_standard_plan():
    tokens = np.arange(3 * 8 + 5 + 1) % 5 + 1
    windows = plan(tokens, 8, 8)
    assert [(w.start, w.end, w.score_from) for w in windows] == [(0, 8, 0), (8, 16, 8), (16, 24, 16), (21, 29, 24)]


def test_segments_without_leading_bos():
    tokens = np.array([5, 6, 0, 7, 8, 0, 9])
    assert segments(tokens, 0) == [(0, 2), (2, 5), (5, 6)]
    assert segments(tokens, None) == [(0, 6)]
