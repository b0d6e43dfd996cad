"""PGOLF_MUON_KEEP_WARMUP_MOMENTUM against R44's own Muon (its script's ``Muon`` class and Newton-Schulz,
executed from its source) and its warm-up's restore (``train_model``: ``copy.deepcopy(opt.state_dict())``
before the warm-up steps, ``opt.load_state_dict`` after them).

Under torchrun R44's momentum is the sharded ``shard_mom`` of each bank, outside its optimizer state, so
the restore leaves it as the warm-up steps left it; on one process its momentum is the optimizer state's
``momentum_buffer``, reset by the restore. pgolf's ParallelMuon, given the same per-rank gradients and
momentum schedule, holds the same bf16 momentum as R44 after the restore and after the next step, on 2
gloo ranks and on one process, and takes the same bf16 step from it."""

from __future__ import annotations

import ast
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from oracles import oracle_path
from pgolf.optim.groups import Optimizers
from pgolf.optim.parallel_muon import ParallelMuon

R44 = "R44_sp8192_lqer_sparsegate_bossmear/train_gpt.py"
BANKS = [(3, 16, 8), (2, 8, 24)]  # R44's banks are 3-D; the first is padded to 4 on 2 ranks
WARMUP_STEPS = 3
OPTIONS = dict(lr=0.02, backend_steps=5, weight_decay=0.095, row_normalize=True)


def r44_muon_class(source: str):
    """R44's Muon, its Newton-Schulz (without its ``@torch.compile``) and their coefficients, run from its
    script's own statements in a namespace of their own."""
    tree = ast.parse(source)
    wanted = {"_PE_COEFFS", "zeropower_via_newtonschulz5", "Muon"}
    nodes = []
    for node in tree.body:
        names = {t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)} | {getattr(node, "name", None)}
        if names & wanted:
            if isinstance(node, ast.FunctionDef):
                node.decorator_list = []  # torch.compile: inductor needs a C compiler on CPU, the math is the same
            nodes.append(node)
    namespace = {"torch": torch, "dist": dist}
    exec(compile(ast.Module(nodes, type_ignores=[]), R44, "exec"), namespace)
    return namespace["Muon"]


def make_problem(ranks: int, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    banks = [torch.randn(shape, generator=gen) for shape in BANKS]
    # per step (the warm-up's, then one timed step), per rank, per bank
    grads = [[[torch.randn(shape, generator=gen) for shape in BANKS] for _ in range(ranks)]
             for _ in range(WARMUP_STEPS + 1)]
    return banks, grads


def momentum_at(step: int) -> float:
    """R44's schedule inside step_fn (MUON_MOMENTUM 0.97 from 0.92 over 1500 steps): the warm-up's steps 0, 1, 2..."""
    return 0.92 + (0.97 - 0.92) * min(step / 1500, 1.0)


def avg_as_sum(reduce_scatter):
    """gloo has no ReduceOp.AVG: R44's reduce-scatter as SUM, then divided by the ranks, finished at once."""

    def call(output, input, op=dist.ReduceOp.SUM, async_op=False, **kwargs):
        average = op == dist.ReduceOp.AVG
        reduce_scatter(output, input, op=dist.ReduceOp.SUM if average else op, **kwargs)
        if average:
            output /= dist.get_world_size()
        return _Done() if async_op else None

    return call


class _Done:
    def wait(self):
        return True


def run_r44(muon_cls, banks, grads, rank: int):
    """R44's warm-up, restore and first timed step; its momentum (one bf16 matrix per bank index it holds)."""
    params = [torch.nn.Parameter(b.clone().bfloat16()) for b in banks]  # R44's banks are bf16 (GPT(h).bfloat16())
    muon = muon_cls(params, momentum=0.97, **OPTIONS)
    initial_weights = [p.detach().clone() for p in params]
    initial_optimizer_state = copy.deepcopy(muon.state_dict())
    momenta = []
    for step, per_rank in enumerate(grads):
        if step == WARMUP_STEPS:  # train_model's restore, then the timed run's step 0
            for p, w in zip(params, initial_weights):
                p.data.copy_(w)
            muon.load_state_dict(initial_optimizer_state)
            momenta.append(r44_momentum(muon, rank))
        for p, g in zip(params, per_rank[rank]):
            p.grad = g.clone().bfloat16()
        for group in muon.param_groups:
            group["momentum"] = momentum_at(step if step < WARMUP_STEPS else 0)
        muon.launch_reduce_scatters()
        muon.step()
    momenta.append(r44_momentum(muon, rank))
    return momenta, [p.detach().float() for p in params]


def r44_momentum(muon, rank: int) -> dict[tuple[int, int], torch.Tensor]:
    """(bank, matrix) -> R44's momentum of that matrix on this rank: its shard_mom rows or the state's buffer."""
    out = {}
    for m in muon._bank_meta:
        b = next(i for i, p in enumerate(muon.param_groups[0]["params"]) if p is m["p"])
        if muon._distributed:
            shard = m["shard_mom"].shape[0]
            for j in range(shard):
                if rank * shard + j < m["B"]:
                    out[(b, rank * shard + j)] = m["shard_mom"][j].clone()
        elif "momentum_buffer" in muon.state[m["p"]]:
            for i in range(m["B"]):
                out[(b, i)] = muon.state[m["p"]]["momentum_buffer"][i].clone()
    return out


def run_pgolf(banks, grads, rank: int, distributed: bool):
    """pgolf's ParallelMuon (bf16 gradients and momentum, as the R44 preset) through the same sequence, the
    restore as pgolf.train.warmup's (the Optimizers' state dicts)."""
    matrices = [[torch.nn.Parameter(m.clone().bfloat16()) for m in b] for b in banks]
    flat = [p for bank in matrices for p in bank]
    muon = ParallelMuon(flat, momentum=0.97, ns_schedule="polar_express", grad_dtype=torch.bfloat16,
                        ns_dtype=torch.bfloat16, reduce_grads=distributed, **OPTIONS)
    if distributed:  # as build_optimizers does with PGOLF_MUON_KEEP_WARMUP_MOMENTUM and per-rank gradients
        muon.keep_momentum_outside_state()
    opts = Optimizers([muon], muon)
    initial_weights = [p.detach().clone() for p in flat]
    initial = [copy.deepcopy(sd) for sd in opts.state_dicts()]
    momenta = []
    for step, per_rank in enumerate(grads):
        if step == WARMUP_STEPS:
            for p, w in zip(flat, initial_weights):
                p.data.copy_(w)
            opts.load_state_dicts(initial)
            momenta.append(pgolf_momentum(muon, matrices))
        mine = per_rank[rank] if distributed else [sum(r[b] for r in per_rank) / len(per_rank) for b in range(len(BANKS))]
        for bank, g in zip(matrices, mine):
            for i, p in enumerate(bank):
                p.grad = g[i].clone().bfloat16()
        opts.set_muon_momentum(momentum_at(step if step < WARMUP_STEPS else 0))
        opts.step()
    momenta.append(pgolf_momentum(muon, matrices))
    return momenta, [torch.stack([p.detach().float() for p in bank]) for bank in matrices]


def pgolf_momentum(muon: ParallelMuon, matrices) -> dict[tuple[int, int], torch.Tensor]:
    out = {}
    for b, bank in enumerate(matrices):
        for i, p in enumerate(bank):
            state = muon._outside.get(p, {}) if muon.momentum_outside_state else muon.state.get(p, {})
            if "momentum_buffer" in state:
                out[(b, i)] = state["momentum_buffer"].clone()
    return out


def assert_same(r44, pgolf):
    (r44_momenta, r44_weights), (pg_momenta, pg_weights) = r44, pgolf
    for want, got in zip(r44_momenta, pg_momenta, strict=True):
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(want[key], got[key]), key
    for want, got in zip(r44_weights, pg_weights, strict=True):
        assert torch.equal(want, got), (want - got).abs().max()  # pgolf rounds its bf16 step as R44 does


def _worker(rank, world, init_file, banks, grads, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dist.reduce_scatter_tensor = avg_as_sum(dist.reduce_scatter_tensor)  # for R44's AVG; pgolf's SUM unchanged
        r44 = run_r44(r44_muon_class(oracle_path(R44).read_text()), banks, grads, rank)
        torch.save({"r44": r44, "pgolf": run_pgolf(banks, grads, rank, distributed=True)}, f"{out_file}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_the_warm_up_momentum_as_r44(tmp_path):
    banks, grads = make_problem(ranks=2)
    out = tmp_path / "result.pt"
    oracle_path(R44)  # skips here, not in the ranks, where the oracles are absent
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), banks, grads, str(out)), nprocs=2, join=True)
    held = set()
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        r44_restored = got["r44"][0][0]
        assert r44_restored and all(m.abs().sum() > 0 for m in r44_restored.values())  # R44 keeps it, nonzero
        held |= set(r44_restored)
        assert_same(got["r44"], got["pgolf"])
    assert held == {(b, i) for b, shape in enumerate(BANKS) for i in range(shape[0])}  # every matrix on one rank


def test_one_process_restores_the_momentum_as_r44():
    banks, grads = make_problem(ranks=1)
    r44 = run_r44(r44_muon_class(oracle_path(R44).read_text()), banks, grads, 0)
    assert r44[0][0] == {}  # restored: the timed run starts from zero momentum
    assert_same(r44, run_pgolf(banks, grads, 0, distributed=False))


def test_the_r44_preset_keeps_the_momentum_outside_the_state_on_several_ranks_only():
    from pgolf.errors import PgolfError
    from pgolf.model.gpt import build_model
    from pgolf.optim.groups import build_optimizers
    from pgolf.presets import build_config

    cfg = build_config("sp8192_lqer_sparsegate_bossmear", ["NUM_LAYERS=2", "MODEL_DIM=128", "NUM_LOOPS=0",
                                                           "PARALLEL_START_LAYER=1"], environ={})
    assert cfg.optim.muon_keep_warmup_momentum
    assert not build_config("leakyrelu_ttt_parallel_muon", environ={}).optim.muon_keep_warmup_momentum  # R22 resets it
    model = build_model(cfg.model)
    for per_rank_grads in (False, True):  # True: several ranks, banks outside DDP (pgolf.train.loop.setup)
        muon = build_optimizers(model, cfg.optim, cfg.model.tie_embeddings, per_rank_grads=per_rank_grads).muon
        assert muon.momentum_outside_state == per_rank_grads
    with pytest.raises(PgolfError, match="^PGOLF_MUON_KEEP_WARMUP_MOMENTUM=1 needs PGOLF_PARALLEL_MUON=1"):
        build_config("baseline", ["PGOLF_MUON_KEEP_WARMUP_MOMENTUM=1"], environ={})
