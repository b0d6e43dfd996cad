"""PGOLF_LOADER=doc_packed is R44's DocumentPackingLoader, and pgolf's forward on its rows is R44's.

R44's own loader (imported from the oracles; its pinned host buffers made plain on CPU) and pgolf's
run side by side, one instance per rank as each process holds one: batch after batch they must
give the same inputs and targets, and pgolf's attention segments (the cuts its model makes from the
row: every BOS and every TRAIN_SEQ_LEN tokens from a document's start, in the three forms the model
uses: exact, padded for FA3, document ids for the SDPA mask) must be R44's ``cu_seqlens``. On small
synthetic shards (a shard starting inside a document, documents longer than TRAIN_SEQ_LEN, empty
ones, a shard too short for a step, wrapping around) and on the real sp1024 train sample. Then one
packed row through both models: pgolf's logits must be R44's ``forward_logits`` with its cu_seqlens.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from oracles import RECORDS, record_and_pgolf_via_checkpoint

from pgolf.config import ModelConfig
from pgolf.data.loader import build_loader
from pgolf.data.shards import write_shard
from pgolf.errors import PgolfError
from pgolf.model.attn_backend import doc_ids_from_bos, padded_segments_from_bos, segments_from_bos
from pgolf.presets import build_config

PRESET = "sp8192_lqer_sparsegate_bossmear"
BOS = 1
SEQ_LEN = 16


@pytest.fixture()
def r44(oracle, monkeypatch):
    """R44's module, its loader's pinned buffers (CUDA-only) plain CPU tensors."""
    mod = oracle(RECORDS[PRESET].script)
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: empty(*a, **k))
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)
    monkeypatch.setattr(mod, "BOS_ID", BOS)
    return mod


def synthetic_shards(folder, vocab: int = 60) -> str:
    """Three shards of documents of 0..40 tokens (some past SEQ_LEN); the first starts inside one."""
    g = np.random.default_rng(3)
    for i, (lead, docs) in enumerate([(7, 28), (0, 9), (3, 45)]):
        parts = [g.integers(2, vocab, lead)]
        for _ in range(docs):
            parts.append(np.concatenate([[BOS], g.integers(2, vocab, int(g.choice([0, 3, 11, 16, 23, 40])))]))
        write_shard(folder / f"fineweb_train_{i:06d}.bin", np.concatenate(parts).astype(np.uint16))
    return str(folder / "fineweb_train_*.bin")


def record_boundaries(cu: torch.Tensor) -> list[int]:
    """R44's cu_seqlens without its padding (the total repeated up to a multiple of 64)."""
    return sorted(set(cu.tolist()))


def assert_same_segments(x: torch.Tensor, cu: torch.Tensor, max_seqlen: int, seq_len: int) -> None:
    expected = record_boundaries(cu)
    exact = segments_from_bos(x, BOS, seq_len)
    assert exact.cu_seqlens.tolist() == expected and exact.max_seqlen == max_seqlen
    padded = padded_segments_from_bos(x, BOS, seq_len)  # FA3's, in the compiled model
    assert record_boundaries(padded.cu_seqlens) == expected and padded.max_seqlen == seq_len  # R44 passes TRAIN_SEQ_LEN
    ids = doc_ids_from_bos(x, BOS, seq_len)[0]  # SDPA's mask
    assert [0, *(torch.nonzero(ids[1:] != ids[:-1]).flatten() + 1).tolist(), x.numel()] == expected


def compare(r44, pattern: str, world_size: int, global_tokens: int, accum: int, steps: int, seq_len: int,
            vocab: int) -> list[int]:
    """Both loaders for every rank, ``steps`` calls each; returns the shard pgolf read per call."""
    visited = []
    for rank in range(world_size):
        h = SimpleNamespace(rank=rank, world_size=world_size, train_seq_len=seq_len, train_files=pattern)
        theirs = r44.DocumentPackingLoader(h, torch.device("cpu"))
        ours = build_loader("doc_packed", pattern, seq_len, 0, rank, world_size, "cpu", vocab, BOS)
        for step in range(steps):
            x, y, cu, max_seqlen = theirs.next_batch(global_tokens, accum)
            gx, gy = ours.next_batch(global_tokens, seq_len, accum)
            assert torch.equal(gx, x) and torch.equal(gy, y), f"rank {rank} call {step}"
            assert_same_segments(gx, cu, max_seqlen, seq_len)
            if rank == 0:
                visited.append((ours.file_idx, ours.cursor, ours.tokens.shape[0]))
    return visited


def skipped_rests(visited) -> list[int]:
    """Tokens left unread at the end of a shard, at each shard change."""
    return [size - cursor for (i, cursor, size), (j, _, _) in zip(visited, visited[1:]) if j != i]


@pytest.mark.parametrize("world_size", [1, 2])
def test_doc_packed_loader_is_r44s_on_synthetic_shards(r44, tmp_path, world_size):
    pattern = synthetic_shards(tmp_path)
    visited = compare(r44, pattern, world_size, global_tokens=96, accum=2 // world_size, steps=60, seq_len=SEQ_LEN,
                      vocab=60)
    shards = [i for i, _, _ in visited]
    assert shards[0] == 0 and 2 in shards and shards[-1] != 2  # every shard, then wrapped around
    assert all(rest > 0 for rest in skipped_rests(visited))  # each change leaves a rest unread, as R44


@pytest.mark.parametrize("world_size", [1, 2])
def test_doc_packed_loader_is_r44s_on_real_shards(r44, train_sample_dir, world_size):
    pattern = str(train_sample_dir / "fineweb_train_*.bin")
    visited = compare(r44, pattern, world_size, global_tokens=65_536, accum=1, steps=22, seq_len=2048, vocab=1024)
    assert [i for i, _, _ in visited][:: len(visited) - 1] == [0, 3] and len(skipped_rests(visited)) == 3  # 0 -> 1 -> 2 -> 3


def test_a_shard_whose_rest_is_exactly_one_step_is_read_to_its_end(r44, tmp_path):
    """R44 moves on only when the rest is shorter than a step: 3 spans of 49 after the first BOS are 3 calls."""
    tokens = np.random.default_rng(5).integers(2, 60, 2 + 3 * 49)
    tokens[[2, 40, 100]] = BOS
    write_shard(tmp_path / "fineweb_train_000000.bin", tokens.astype(np.uint16))
    visited = compare(r44, str(tmp_path / "fineweb_train_*.bin"), 1, global_tokens=48, accum=1, steps=7, seq_len=SEQ_LEN,
                      vocab=60)
    assert [cursor for _, cursor, _ in visited] == [51, 100, 149, 51, 100, 149, 51]


def test_a_step_no_shard_holds_is_refused(tmp_path):
    pattern = synthetic_shards(tmp_path)
    loader = build_loader("doc_packed", pattern, SEQ_LEN, 0, 0, 1, "cpu", 60, BOS)
    with pytest.raises(PgolfError, match="no training shard holds"):
        loader.next_batch(100_000, SEQ_LEN, 1)


def test_doc_packed_needs_document_isolated_attention():
    with pytest.raises(PgolfError, match="DOC_ISOLATED_ATTENTION"):
        build_config("baseline", ["PGOLF_LOADER=doc_packed"], environ={})
    assert build_config(PRESET, environ={}).train.loader == "doc_packed"
    assert build_config("baseline", environ={}).train.loader == "sequential"


# -- one packed row through both models ---------------------------------------------------------

ROW_SEQ_LEN = 64  # TRAIN_SEQ_LEN of the row: shorter than the row, so its cuts matter
SHALLOW = ["NUM_LAYERS=3", "LOOP_START=1", "LOOP_END=1", "PARALLEL_START_LAYER=2", "XSA_LAST_N=3",
           f"TRAIN_SEQ_LEN={ROW_SEQ_LEN}", f"PGOLF_MAX_DOC_LEN={ROW_SEQ_LEN}"]


def packed_row(vocab: int) -> torch.Tensor:
    """200 tokens: a document begun in an earlier row (cut at 64), one from 70 to 170 (cut at 134,
    not at a multiple of 64 from the row start), an empty one, one to the end."""
    ids = torch.randint(2, vocab, (1, 200), generator=torch.Generator().manual_seed(9))
    ids[0, [70, 170, 171]] = BOS
    return ids


@pytest.fixture(scope="module")
def models(oracle, tmp_path_factory):
    mod = oracle(RECORDS[PRESET].script)
    cfg = build_config(PRESET, SHALLOW, environ={})
    mod.BOS_ID = BOS
    theirs, ours = record_and_pgolf_via_checkpoint(mod, PRESET, cfg, 13, tmp_path_factory.mktemp("r44"))
    return mod, cfg, theirs, ours


def record_row_logits(mod, theirs, ids: torch.Tensor) -> torch.Tensor:
    """As R44's training forward gets a row: cu_seqlens from its loader's BOS positions, max_seqlen TRAIN_SEQ_LEN."""
    bos = (ids[0] == BOS).nonzero(as_tuple=True)[0].tolist()
    cu, _ = mod._build_cu_seqlens(bos, ids.numel(), ids.device, ROW_SEQ_LEN, 64)
    assert record_boundaries(cu) == [0, 64, 70, 134, 170, 171, 200]
    return theirs.forward_logits(ids, cu_seqlens=cu, max_seqlen=ROW_SEQ_LEN)


@torch.no_grad()
def test_pgolfs_forward_on_a_packed_row_is_r44s(models):
    mod, cfg, theirs, ours = models
    ids = packed_row(cfg.model.vocab_size)
    expected = record_row_logits(mod, theirs, ids)
    assert (ours.logits(ids) - expected).abs().max().item() < 1e-4


@torch.no_grad()
def test_r44s_smear_reads_across_a_length_cut_but_not_a_bos(models):
    """Its SmearGate mixes the previous token in everywhere but at a BOS, a TRAIN_SEQ_LEN cut too
    (attention alone is cut there): changing the token before a cut moves the logits after it,
    changing the token before a BOS does not; pgolf agrees on both rows."""
    mod, cfg, theirs, ours = models
    ids = packed_row(cfg.model.vocab_size)
    base = record_row_logits(mod, theirs, ids)
    for before, changes in ((133, True), (169, False)):
        other = ids.clone()
        other[0, before] = 2 + (int(ids[0, before]) - 1) % (cfg.model.vocab_size - 2)
        theirs_other = record_row_logits(mod, theirs, other)
        assert (theirs_other[0, before + 1] - base[0, before + 1]).abs().max().item() > 1e-3 if changes else \
            (theirs_other[0, before + 1 :] - base[0, before + 1 :]).abs().max().item() < 1e-6
        assert (ours.logits(other) - theirs_other).abs().max().item() < 1e-4


def test_max_doc_len_changes_nothing_in_rows_no_longer_than_it():
    """Standard rows of TRAIN_SEQ_LEN (evaluation) see only the BOS cuts."""
    ids = packed_row(8192)[:, :64]
    assert torch.equal(segments_from_bos(ids, BOS, 64).cu_seqlens, segments_from_bos(ids, BOS).cu_seqlens)
    assert ModelConfig().max_doc_len == 0


@pytest.mark.parametrize("skip", [0, 1])
def test_training_feeds_the_packed_rows_and_restarts_them_after_the_warm_up(r44, shared_data, tmp_path, monkeypatch, skip):
    """A short CPU run: every micro-batch is one packed row of R44's own loader; the compile warm-up's
    step reads the loader's first row, or with PGOLF_WARMUP_SKIP_BATCHES=1 its second, as R44's
    warm-up does after its cu_seqlens bucket warm-up read the first; the timed run starts again from
    the first row (as R44 rebuilds its loader)."""
    from pgolf.model.gpt import GPT
    from pgolf.train.loop import train

    seen = []
    forward = GPT.forward
    monkeypatch.setattr(GPT, "forward", lambda self, x, y, *a, **k: seen.append(x.clone()) or forward(self, x, y, *a, **k))
    data = shared_data / "datasets" / "fineweb10B_sp1024_trainsample"
    cfg = build_config("tiny_cpu", [
        f"DATA_PATH={data}", f"VAL_FILES={shared_data / 'datasets' / 'fineweb10B_sp1024_valprefix' / 'fineweb_val_000000.bin'}",
        f"TOKENIZER_PATH={shared_data / 'tokenizers' / 'fineweb_1024_bpe.model'}", "ITERATIONS=2", "WARMUP_STEPS=1",
        "VAL_MAX_TOKENS=2048", "TRAIN_LOG_EVERY=0", "PGOLF_LOADER=doc_packed", "DOC_ISOLATED_ATTENTION=1",
        "PGOLF_MAX_DOC_LEN=128", f"PGOLF_WARMUP_SKIP_BATCHES={skip}", "RUN_ID=p"], environ={})
    train(cfg, runs_dir=tmp_path, echo=False)
    rows = [x for x in seen if x.shape == (1, 2048)]
    h = SimpleNamespace(rank=0, world_size=1, train_seq_len=128, train_files=str(data / "fineweb_train_*.bin"))
    theirs = r44.DocumentPackingLoader(h, torch.device("cpu"))
    first, second = theirs.next_batch(2048, 1)[0], theirs.next_batch(2048, 1)[0]
    expected = [second if skip else first, first, second]
    assert len(rows) == 3 and all(torch.equal(a, b) for a, b in zip(rows, expected))


def test_the_cut_segments_compile_once_for_every_document_layout():
    """The FA3 segments of a packed row trace under fullgraph with no recompile per row."""
    from pgolf.bench.recompile import RecompileWatch

    torch._dynamo.reset()
    build = torch.compile(padded_segments_from_bos, fullgraph=True, dynamic=False, backend="eager")
    build(packed_row(60), BOS, 64)
    watch = RecompileWatch()
    with watch.forbid("new document layouts"):
        for seed in range(1, 4):
            other = torch.randint(0, 4, (1, 200), generator=torch.Generator().manual_seed(seed))
            assert torch.equal(build(other, BOS, 64).cu_seqlens, padded_segments_from_bos(other, BOS, 64).cu_seqlens)
    torch._dynamo.reset()
