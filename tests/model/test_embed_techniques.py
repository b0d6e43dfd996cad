"""BigramHash, SmearGate v1/v2 and their BOS fixes."""

from __future__ import annotations

import torch
from techniques_helpers import BOS, tiny_cfg, tiny_model, tokens

from pgolf.model.embed import SmearGateV1, SmearGateV2, bigram_buckets
from pgolf.model.gpt import GPT


def test_xor_hash_formula_and_first_position():
    ids = torch.tensor([[7, 300, 5, 1023]])
    b = bigram_buckets(ids, 4096, "xor")
    assert b[0, 0] == 4095
    for t in range(1, 4):
        cur, prev = int(ids[0, t]), int(ids[0, t - 1])
        assert b[0, t] == ((36313 * cur) ^ (27191 * prev)) % 4095
    assert int(b.max()) < 4096


def test_mul_hash_is_r15s():
    ids = torch.tensor([[7, 300, 5]])
    b = bigram_buckets(ids, 4096, "mul")
    assert b.tolist() == [[7, (300 + 7 * 92821) % 4096, (5 + 300 * 92821) % 4096]]


def test_bigram_bos_fix_hashes_bos_as_a_first_position():
    ids = torch.tensor([[9, 8, BOS, 4]])
    assert bigram_buckets(ids, 64, "xor", bos_id=BOS)[0, 2] == 63
    assert bigram_buckets(ids, 64, "xor")[0, 2] == ((36313 * BOS) ^ (27191 * 8)) % 63


def test_bigram_adds_a_pair_feature_that_starts_at_zero():
    plain = tiny_model()
    with_bigram = tiny_model(bigram_vocab_size=64, bigram_dim=16)
    with_bigram.load_state_dict(plain.state_dict(), strict=False)
    x = tokens()
    with torch.no_grad():
        with_bigram.bigram.proj.weight.zero_()  # the init: identity at start
    assert torch.allclose(with_bigram.logits(x), plain.logits(x), atol=1e-6)
    fresh = GPT(tiny_cfg(bigram_vocab_size=64)).bigram
    assert fresh.scale.item() == torch.tensor(0.05).item() and torch.count_nonzero(fresh.table.weight) == 0
    assert GPT(tiny_cfg(bigram_vocab_size=64, bigram_scale=0.0)).bigram.scale is None  # R15: no scale
    with torch.no_grad():
        with_bigram.bigram.proj.weight.normal_()
    x2 = x.clone()
    x2[0, 9] = (x2[0, 9] + 1) % 126 + 2  # token 10's pair changes, token 10 itself does not
    emb = with_bigram.bigram(x) - with_bigram.bigram(x2)
    assert emb[0, 10].abs().max() > 0 and emb[0, 11:].abs().max() == 0 and emb[1].abs().max() == 0


def test_smeargate_v1_formula():
    gate = SmearGateV1(4)
    with torch.no_grad():
        gate.gate.copy_(torch.tensor([0.0, 1.0, -2.0, 3.0]))
    x = torch.randn(1, 5, 4)
    ids = torch.full((1, 5), 7)
    s = torch.sigmoid(gate.gate)
    expected = s * x + (1 - s) * torch.cat((torch.zeros(1, 1, 4), x[:, :-1]), 1)
    assert torch.allclose(gate(x, ids), expected)
    assert torch.allclose(torch.sigmoid(SmearGateV1(4).gate), torch.full((4,), torch.sigmoid(torch.tensor(3.0)).item()))


def test_smeargate_v1_weighing_the_previous_token_is_r22s_gate():
    # R22 / PR #1090: (1 - sig(g)) x_t + sig(g) x_{t-1}; the same value of g smears the other way
    gate, r15_gate = SmearGateV1(4, init=0.0, weighs="previous"), SmearGateV1(4)
    g = torch.tensor([0.0, 1.0, -2.0, 3.0])
    with torch.no_grad():
        gate.gate.copy_(g)
        r15_gate.gate.copy_(-g)
    x = torch.randn(1, 5, 4)
    ids = torch.full((1, 5), 7)
    s = torch.sigmoid(g)
    expected = (1 - s) * x + s * torch.cat((torch.zeros(1, 1, 4), x[:, :-1]), 1)
    assert torch.allclose(gate(x, ids), expected)
    assert torch.allclose(r15_gate(x, ids), expected)  # R15's form needs -g for it


def test_smeargate_v2_formula_and_zero_init_identity():
    gate = SmearGateV2(window=3)
    x = torch.randn(1, 5, 8)
    ids = torch.full((1, 5), 7)
    assert torch.equal(gate(x, ids), x)  # lam = 0 and W = 0 at init
    with torch.no_grad():
        gate.lam.fill_(0.7)
        gate.gate.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
    g = 0.7 * torch.sigmoid(x[..., :3] @ gate.gate.T)
    expected = x + g * torch.cat((torch.zeros(1, 1, 8), x[:, :-1]), 1)
    assert torch.allclose(gate(x, ids), expected)


def test_smear_bos_fix_drops_the_previous_token_at_bos():
    x = torch.randn(1, 4, 8)
    ids = torch.tensor([[5, 6, BOS, 7]])
    for gate in (SmearGateV1(8, bos_id=BOS), SmearGateV2(3, bos_id=BOS)):
        with torch.no_grad():
            for p in gate.parameters():
                p.add_(0.5)
        out = gate(x, ids)
        y = x.clone()
        y[:, 1] += 10.0  # the token before the BOS
        assert torch.equal(gate(y, ids)[:, 2], out[:, 2])


def documents(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches that differ only in document 0 (positions 0..14); document 1 starts at 15."""
    x = tokens(seqlen=40, seed=seed)
    x[:, [0, 15, 27]] = BOS
    y = x.clone()
    y[:, 3:15] = (y[:, 3:15] + 5) % 126 + 2
    return x, y


def test_with_bos_fixes_and_isolated_attention_documents_are_independent():
    x, y = documents()
    for smear in ({"use_smeargate": True}, {"smear_gate_enabled": True}):
        model = tiny_model(doc_isolated_attention=True, smear_bos_fix=True, bigram_vocab_size=64,
                           bigram_bos_fix=True, **smear)
        assert torch.equal(model.logits(x)[:, 15:], model.logits(y)[:, 15:]), smear
        leaky = tiny_model(doc_isolated_attention=True, **smear)
        assert not torch.equal(leaky.logits(x)[:, 15:16], leaky.logits(y)[:, 15:16]), smear
