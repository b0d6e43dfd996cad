"""Depth recurrence (looped layers): run a range of physical blocks several times, sharing weights.

R26 (PR #1204) repeated layers 4-5 once from step 3000; R35+ (``NUM_LOOPS=2``, layers 3-5) runs the
virtual order ``[0,1,2,3,4,5,3,4,5,3,4,5,6,...]``, switched on at 35% of the wallclock; R31 is
progressive (one extra pass at 50%, two at 65%). The virtual order is split in half into the
U-Net's encoder and decoder. No parameters are added: a looped block is the same module.
"""

from __future__ import annotations


def looped_layer_order(num_layers: int, loop_start: int, loop_end: int, loops: int) -> list[int]:
    """Physical block index of each virtual layer with ``loops`` extra passes over start..end."""
    if loops <= 0:
        return list(range(num_layers))
    segment = list(range(loop_start, loop_end + 1))
    return list(range(loop_start)) + segment * (loops + 1) + list(range(loop_end + 1, num_layers))


def encoder_decoder(order: list[int]) -> tuple[list[int], list[int]]:
    """First half (pushes U-Net skips) and second half (pops them) of a virtual order."""
    half = len(order) // 2
    return order[:half], order[half:]
