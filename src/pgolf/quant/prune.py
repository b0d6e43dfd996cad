"""Selective +-1 pruning (R24, PR #1019, from PR #609): zero quantized codes of magnitude 1 until the
artifact fits a byte target.

Zeroing a code ``q = +-1`` of a row with scale ``s`` changes that weight by exactly ``s``, so its
reconstruction cost is ``s^2``. R24 lists every ``+-1`` code of its int6 per-row tensors with that
cost, sorts them cheapest first (a stable sort: equal costs keep tensor order, then row-major
position), and zeroes the shortest prefix of that list that makes the compressed artifact fit:
nothing when it already fits, everything when even that does not, otherwise the prefix length
found by binary search over the measured size (which assumes the size falls as more codes go).
Zeros compress better than +-1, which is what buys the bytes.

Here the candidates are the ``intn`` entries whose names match ``scope`` (policy patterns: roles
or globs; R24's are its ``mlp`` and ``attn`` categories), with per-row scales or per-group ones (a
group's code costs its group's scale squared; R24 has no groups). ``size_of`` is the caller's
measure of what the artifact would cost (pgolf.train.loop passes the encoded artifact's length
plus the code bytes), so the target is checked with the one byte count the export uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pgolf.errors import PgolfError
from pgolf.quant.int8 import KIND_INTN, QuantEntry, QuantizedState

R24_SCOPE = "attn,mlp"


@dataclass(frozen=True)
class Candidates:
    """Every +-1 code in scope, cheapest first: ``entry`` (index into the state), ``flat`` (index
    into that entry's flattened codes) and ``cost`` (scale squared), all aligned."""

    entry: Tensor
    flat: Tensor
    cost: Tensor

    def __len__(self) -> int:
        return int(self.cost.numel())


@dataclass(frozen=True)
class PruneResult:
    """The pruned state, how many of the candidates were zeroed, and the sizes measured."""

    state: QuantizedState
    pruned: int
    candidates: int
    bytes_before: int
    bytes_after: int
    fits: bool

    def summary(self, target: int) -> str:
        share = 100.0 * self.pruned / self.candidates if self.candidates else 0.0
        verdict = "fits" if self.fits else "does NOT fit even with every candidate zeroed"
        return (f"selective_prune: {self.pruned:,}/{self.candidates:,} +-1 codes zeroed ({share:.1f}%), "
                f"{self.bytes_before:,} -> {self.bytes_after:,} bytes, target {target:,}: {verdict}")


def _in_scope(name: str, scope: Sequence[str]) -> bool:
    from pgolf.quant.policy import pattern_matches

    return any(pattern_matches(p, name) for p in scope)


def parse_scope(text: str) -> tuple[str, ...]:
    """The comma-separated patterns of ``text``; PgolfError when there are none."""
    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    if not patterns:
        raise PgolfError("selective prune scope is empty (give roles or globs, e.g. 'attn,mlp')")
    return patterns


def _unit_cost(e: QuantEntry) -> Tensor:
    """``scale^2`` (fp32, as R24's ``s.float().pow(2)``) for every code of entry ``e``, row-major."""
    s = e.scale.float().pow(2)
    rows, cols = e.values.shape
    if e.group_size == 0:
        return s[:, None].expand(rows, cols)
    return s.reshape(rows, -1).repeat_interleave(e.group_size, dim=1)


def plus_minus_one_candidates(q: QuantizedState, scope: Sequence[str] = (R24_SCOPE,)) -> Candidates:
    """The +-1 codes of the in-scope intn entries of ``q``, sorted as R24 sorts them."""
    scope = tuple(p for s in scope for p in parse_scope(s))
    entries, flats, costs = [], [], []
    for i, e in enumerate(q):
        if e.kind != KIND_INTN or e.scale is None or e.values.ndim != 2 or not _in_scope(e.name, scope):
            continue
        mask = e.values.abs() == 1
        flat = torch.nonzero(mask.reshape(-1), as_tuple=True)[0]  # row-major, as R24's boolean indexing
        entries.append(torch.full_like(flat, i))
        flats.append(flat)
        costs.append(_unit_cost(e).reshape(-1)[flat])
    if not costs:
        empty = torch.zeros(0, dtype=torch.long)
        return Candidates(empty, empty, torch.zeros(0))
    entry, flat, cost = torch.cat(entries), torch.cat(flats), torch.cat(costs)
    order = torch.sort(cost, stable=True).indices  # ties keep tensor order, then position
    return Candidates(entry[order], flat[order], cost[order])


def zero_first(q: QuantizedState, cand: Candidates, n: int) -> QuantizedState:
    """``q`` with the ``n`` cheapest candidates' codes set to 0 (the input is left as it was)."""
    n = max(0, min(n, len(cand)))
    chosen_entry, chosen_flat = cand.entry[:n], cand.flat[:n]
    out = []
    for i, e in enumerate(q):
        picked = chosen_flat[chosen_entry == i]
        if picked.numel() == 0:
            out.append(e)
            continue
        codes = e.values.clone()
        codes.view(-1)[picked] = 0
        out.append(dataclasses.replace(e, values=codes))
    return QuantizedState(tuple(out))


def prune_to_fit(
    q: QuantizedState, size_of: Callable[[QuantizedState], int], target_bytes: int,
    scope: Sequence[str] = (R24_SCOPE,),
) -> PruneResult:
    """R24's search: the fewest cheapest +-1 codes to zero for ``size_of(state) <= target_bytes``."""
    cand = plus_minus_one_candidates(q, scope)
    sizes: dict[int, int] = {}

    def size_after(n: int) -> int:
        if n not in sizes:
            sizes[n] = size_of(zero_first(q, cand, n) if n else q)
        return sizes[n]

    before = size_after(0)
    if before <= target_bytes or len(cand) == 0:
        return PruneResult(q, 0, len(cand), before, before, before <= target_bytes)
    full = size_after(len(cand))
    if full > target_bytes:
        return PruneResult(zero_first(q, cand, len(cand)), len(cand), len(cand), before, full, False)
    lo, hi = 0, len(cand)  # size_after(hi) fits
    while lo < hi:
        mid = (lo + hi) // 2
        if size_after(mid) <= target_bytes:
            hi = mid
        else:
            lo = mid + 1
    return PruneResult(zero_first(q, cand, lo), lo, len(cand), before, size_after(lo), True)
