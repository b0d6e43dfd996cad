"""A tiny model trained for a few seconds on a synthetic Markov source, and batches from that source.

Trained weights (not random ones) give GPTQ and LQER the correlated inputs and structured errors
they exploit; the source needs no challenge data, so these tests always run.
"""

from __future__ import annotations

import pytest
import torch

from pgolf.model.gpt import build_model
from pgolf.presets import tiny_cpu

VOCAB = 1024
ALPHABET = 128  # the source uses the first 128 token ids, so 60 steps learn it well (loss ~1.9, floor ln 4)
SEQ = 64


def successor_table() -> torch.Tensor:
    """[VOCAB, 4]: the tokens that may follow each token in the Markov source."""
    return torch.randint(0, ALPHABET, (VOCAB, 4), generator=torch.Generator().manual_seed(1234))


def markov_batches(num: int, batch: int, seed: int) -> list[torch.Tensor]:
    """Sequences where each token is followed by one of 4 fixed successors (a learnable source)."""
    successors = successor_table()
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        tok = torch.randint(0, ALPHABET, (batch,), generator=g)
        seq = [tok]
        for _ in range(SEQ):
            pick = torch.randint(0, 4, (batch,), generator=g)
            tok = successors[tok, pick]
            seq.append(tok)
        out.append(torch.stack(seq, dim=1))
    return out


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: these tensors are tiny, and on a loaded shared CPU a second spinning
    thread costs far more than it gives (as in tests/model)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_tiny():
    """``(model, calibration batches)``: tiny_cpu trained 60 Adam steps (lr 1e-2) on the Markov source."""
    torch.manual_seed(0)
    model = build_model(tiny_cpu().model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only adds contention on a busy machine
    try:
        for seqs in markov_batches(60, 8, seed=1):
            loss = model(seqs[:, :-1], seqs[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, [s[:, :-1] for s in markov_batches(4, 8, seed=2)]
