"""Per-document LoRA TTT, many documents side by side, attached with forward hooks.

Documents are the BOS-delimited segments of the stream. A batch of ``TTT_BATCH_SIZE`` documents
gets one rank-``TTT_LORA_RANK`` adapter per document and per target module (``A[doc, r, in]``
random, ``B[doc, out, r]`` zero, so every adapter starts as the identity):

* ``q`` / ``v``: a hook on ``blocks.i.attn.c_q`` / ``c_v`` adds ``x A^T B^T`` to the projection;
* ``head``: a hook on ``final_norm`` adds ``h A^T B^T`` to the hidden state the tied head reads, so
  the head's effective weight becomes ``W (I + B A)`` (a rank-r update on its input side; this
  needs no change to the model's logits code and works for tied and untied heads alike);
* R44's targets: ``k`` (``c_k``, as q and v), ``o`` (a hook on ``blocks.i.attn`` adds ``n A^T B^T``
  to the attention's output projection, reading the block's normed input ``n`` as R44's O adapter
  does), ``mlp`` (on ``blocks.i.mlp``, reading the MLP's normed input) and ``logits`` (the head's
  output before the softcap, vocab side: ``h A^T B^T`` with ``B`` of vocab rows).

With ``PGOLF_TTT_LORA_PER_PASS`` each pass of a looped block has adapters of its own (R44's one
set per virtual layer); a pre-hook on the model restarts the pass count at every forward.
``PGOLF_TTT_LORA_INIT=r44`` draws R44's ``A ~ U(+-1/sqrt(fan_in))`` (from the document's own
generator, where R44 keeps a trained ``A`` from one document to the next) and scales the output
by ``TTT_LORA_ALPHA / rank``; ``TTT_BETA1``/``TTT_BETA2``/``PGOLF_TTT_ADAM_EPS`` set Adam, and
``TTT_WEIGHT_DECAY`` > 0 makes it AdamW.

Each document is cut into chunks of ``TTT_CHUNK_SIZE`` targets. Step k scores chunk k of every
document still running (context: up to ``TTT_EVAL_SEQ_LEN`` inputs of the same document), then,
for documents with a chunk k+1, takes one Adam step on the loss of chunk k, whose tokens the
ledger hands out because they were just scored.

Legality (a target's loss depends only on the artifact and the tokens before it): which documents
share a batch depends on later documents (batches hold documents of similar length), so nothing a
document's scores depend on may depend on its batch. Its ``A`` is drawn from its own generator,
seeded with the seed and the document's start position (:func:`document_generator`); its optimizer
state is its own rows (the loss is a sum of per-document means, Adam is elementwise, and every
document of a batch takes its k-th step together); step k's batch is padded to a length fixed by
k and the settings (:func:`step_length`), after each window's last input, which a causal model never
reads; its windows start where a full chunk's would, even where the document ends (:func:`chunk_window`);
with ``ROPE_YARN`` the base is that of the configured window length. So a document is adapted as it
would be alone, bit for bit on CPU, on any rank of torch.distributed too, where the batches are
dealt to the ranks in turn.
"""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from pgolf.config import EvalConfig
from pgolf.eval.evaluate import autocast_for, rank_and_world
from pgolf.eval.ledger import ScoreLedger
from pgolf.eval.sliding import LedgerResult, ledger_result, score_windows, scored_positions
from pgolf.eval.windows import Window, segments
from pgolf.model.rope import ntk_length_pinned
from pgolf.tokenizer.luts import TorchByteTable


HEAD_PROJECTION = "head_projection"  # the ``logits`` target: no module to hook, the GPT's method is wrapped


def target_modules(model: nn.Module, targets: str) -> dict[str, tuple[nn.Module, int, int]]:
    """name -> (module to hook, in features, out features) for the requested LoRA targets."""
    wanted = set(filter(None, targets.split(",")))
    found: dict[str, tuple[nn.Module, int, int]] = {}
    dim = model.cfg.model_dim  # the normed block input's and the final hidden's width
    for i, block in enumerate(model.blocks):
        for key, attr in (("q", "c_q"), ("k", "c_k"), ("v", "c_v")):
            if key in wanted:
                lin = getattr(block.attn, attr)
                found[f"blocks.{i}.attn.{attr}"] = (lin, lin.in_features, lin.out_features)
        if "o" in wanted:  # reads the attention's input, the block's normed input, as R44's O adapter
            found[f"blocks.{i}.attn"] = (block.attn, dim, block.attn.proj.out_features)
        if "mlp" in wanted:
            found[f"blocks.{i}.mlp"] = (block.mlp, dim, block.mlp.proj.out_features)
    if "head" in wanted:
        found["final_norm"] = (model.final_norm, dim, dim)  # the table's width may be narrower: EMBED_DIM
    if "logits" in wanted:
        found[HEAD_PROJECTION] = (model, dim, model.cfg.vocab_size)
    return found


def passes_of(model: nn.Module, name: str, per_pass: bool) -> int:
    """How many adapters module ``name`` gets: one per pass of its block with ``per_pass``, else one."""
    if not per_pass or not name.startswith("blocks."):
        return 1
    return model.layer_order().count(int(name.split(".")[1]))


def document_generator(seed: int, doc_start: int) -> torch.Generator:
    """The generator of one document's adapter initialisation: a function of the seed and where the
    document starts (a BOS, i.e. earlier tokens) alone, never of the documents that share its batch."""
    return torch.Generator().manual_seed(seed * 1_000_003 + doc_start)


def initial_a(fans_in: list[int], rank: int, seed: int, doc_start: int) -> list[torch.Tensor]:
    """One document's ``A`` of every hooked module, drawn from that document's own generator."""
    generator = document_generator(seed, doc_start)
    return [torch.randn(rank, fan_in, generator=generator) / math.sqrt(fan_in) for fan_in in fans_in]


def initial_adapters(shapes: list[tuple[int, int]], rank: int, seed: int, doc_start: int,
                     init: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One document's ``(A, B)`` of every hooked module ((fan in, fan out) each), from its own generator.

    ``identity``: A ~ N(0, 1/fan_in), every A first, and B = 0, so the adapted model starts as the
    model. ``pr1090``: PR #1090's ``LoRALinear.reset``, module by module A ~ N(0, 0.01^2) then
    B ~ N(0, 0.001^2) (its draws, in its order, from the document's generator instead of the global
    one, which would tie a document's start to every document before it)."""
    if init == "identity":
        a = initial_a([fan_in for fan_in, _ in shapes], rank, seed, doc_start)
        return [(a_m, torch.zeros(fan_out, rank)) for a_m, (_, fan_out) in zip(a, shapes)]
    generator = document_generator(seed, doc_start)
    if init == "r44":  # R44's BatchedLinearLoRA: A ~ U(+-1/sqrt(in)), B = 0, adapter by adapter
        return [(torch.empty(rank, fan_in).uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in), generator=generator),
                 torch.zeros(fan_out, rank)) for fan_in, fan_out in shapes]
    return [(torch.empty(rank, fan_in).normal_(0.0, 0.01, generator=generator),
             torch.empty(fan_out, rank).normal_(0.0, 0.001, generator=generator)) for fan_in, fan_out in shapes]


def adapter_scale(init: str, rank: int, alpha: float = 1.0) -> float:
    """The factor on every adapter's output: PR #1090 scales by 1/rank, R44 by alpha/rank."""
    if init == "r44":
        return alpha / rank
    return 1.0 / rank if init == "pr1090" else 1.0


class BatchedLoRA(nn.Module):
    """Independent low-rank adapters for the documents starting at ``doc_starts`` on the hooked modules."""

    def __init__(self, model: nn.Module, doc_starts: list[int], rank: int, targets: str, seed: int, device,
                 init: str = "identity", alpha: float = 1.0, per_pass: bool = False):
        super().__init__()
        self.model = [model]  # not a submodule: its parameters are not the adapters'
        self.modules_by_name = target_modules(model, targets)
        # adapter index -> (module name, pass): a module's adapters are consecutive, pass by pass
        self.slots = [(name, p) for name in self.modules_by_name for p in range(passes_of(model, name, per_pass))]
        self.first_slot = {name: self.slots.index((name, 0)) for name in self.modules_by_name}
        shapes = [self.modules_by_name[name][1:] for name, _ in self.slots]
        per_doc = [initial_adapters(shapes, rank, seed, start, init) for start in doc_starts]
        self.scale = adapter_scale(init, rank, alpha)
        self.calls = dict.fromkeys(self.modules_by_name, 0)
        self.a = nn.ParameterList()
        self.b = nn.ParameterList()
        for m in range(len(shapes)):
            self.a.append(nn.Parameter(torch.stack([doc[m][0] for doc in per_doc]).to(device)))
            self.b.append(nn.Parameter(torch.stack([doc[m][1] for doc in per_doc]).to(device)))
        self.rows = torch.arange(len(doc_starts), device=device)

    def _delta(self, index: int, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        a, b = self.a[index][self.rows], self.b[index][self.rows]
        dtype = torch.promote_types(x.dtype, a.dtype)  # fp32 adapters on a bf16 model; fp64 in the parity tests
        x, a, b = x.to(dtype), a.to(dtype), b.to(dtype)
        single = x.size(0) == 1
        if single:  # bmm of one matrix backpropagates through another CPU kernel than bmm of several (the
            # last bits of the vocab-wide logits adapter's gradients): a lone document would adapt
            # otherwise than beside a batch mate, so it runs as two rows
            x, a, b = x.repeat(2, 1, 1), a.repeat(2, 1, 1), b.repeat(2, 1, 1)
        delta = torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))
        if single:
            delta = delta[:1]
        if self.scale != 1.0:
            delta = delta * self.scale
        return output + delta.to(output.dtype)

    def _hook(self, name: str, on_output: bool):
        first, passes = self.first_slot[name], sum(1 for n, _ in self.slots if n == name)

        def add_delta(module, inputs, output):
            index = first
            if passes > 1:  # this forward's k-th call of the module is its block's k-th pass
                index += self.calls[name]
                self.calls[name] += 1
            # a linear layer's adapter reads its input; the head's reads the normed hidden state
            return self._delta(index, output if on_output else inputs[0], output)

        return add_delta

    def _restart_passes(self, module, inputs):
        for name in self.calls:
            self.calls[name] = 0

    @contextmanager
    def attached(self, rows: list[int]):
        """Hooks active for documents ``rows`` (batch row j uses adapter ``rows[j]``)."""
        self.rows = torch.tensor(rows, device=self.a[0].device)
        model = self.model[0]
        handles = [model.register_forward_pre_hook(self._restart_passes)]
        handles += [m.register_forward_hook(self._hook(name, name == "final_norm"))
                    for name, (m, _, _) in self.modules_by_name.items() if name != HEAD_PROJECTION]
        if HEAD_PROJECTION in self.modules_by_name:  # logits before the softcap, plus the adapter on the final hidden
            project, index = model.head_projection, self.first_slot[HEAD_PROJECTION]
            model.head_projection = lambda x: self._delta(index, x, project(x))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            if HEAD_PROJECTION in self.modules_by_name:
                del model.head_projection


def chunk_window(doc: tuple[int, int], k: int, chunk: int, context: int) -> Window | None:
    """Window scoring chunk ``k`` of ``doc`` with up to ``context`` inputs of that document.

    A document's last chunk is cut short where the next document starts; its window still starts
    where a full chunk's would, so no target's context depends on where its document ends (R44
    reaches back from the cut end instead).
    """
    a, b = doc
    first = a + k * chunk
    if first >= b:
        return None
    return Window(max(a, first + chunk - context), min(first + chunk, b), first)


def step_length(k: int, chunk: int, context: int) -> int:
    """The padded length of step ``k``'s batch: the longest window a chunk ``k`` can have.

    A function of ``k`` and the settings alone: padded to the batch's longest window instead, a
    document's numbers would follow its batch mates' lengths (in the last bits on CPU, where a
    position's result can depend on its row's padded length; through the base with ``ROPE_YARN``).
    """
    return min((k + 1) * chunk, context)


def stacked_training_batch(ledger: ScoreLedger, windows: list[Window], length: int, device):
    """Inputs/targets of already-scored windows, only ever taken from the ledger's training side."""
    x = torch.zeros(len(windows), length, dtype=torch.int64)
    y = torch.zeros(len(windows), length, dtype=torch.int64)
    for row, w in enumerate(windows):
        toks = ledger.training_tokens(w.start, w.end)
        x[row, : w.length], y[row, : w.length] = toks[:-1], toks[1:]
    return x.to(device), y.to(device)


def chunk_loss(model: nn.Module, ledger: ScoreLedger, windows: list[Window], length: int, device) -> torch.Tensor:
    """Sum over documents of the mean loss on each one's scored chunk."""
    x, y = stacked_training_batch(ledger, windows, length, device)
    with autocast_for(device):
        losses = model(x, y, reduction="none").float()
    rows, cols, _ = scored_positions(windows, device)
    counts = torch.tensor([w.scored for w in windows], device=device, dtype=torch.float32)
    return (losses[rows, cols] / counts[rows]).sum()


def adapt_documents(
    model: nn.Module, ledger: ScoreLedger, docs: list[tuple[int, int]], s: EvalConfig, device, seed: int
) -> None:
    """Score every target of ``docs`` chunk by chunk with per-document LoRA adapted in between."""
    lora = BatchedLoRA(model, [a for a, _ in docs], s.ttt_lora_rank, s.ttt_lora_targets, seed, device, s.ttt_lora_init,
                       s.ttt_lora_alpha, s.ttt_lora_per_pass)
    optimizer = lora_optimizer(lora, s)
    # TTT_MIN_DOC_LEN: a document's first targets are scored with its adapters as drawn (split_at_min_doc_len)
    initial = [p.detach().clone() for p in lora.parameters()] if s.ttt_min_doc_len > 1 else None
    context = lora_context(s)
    with ntk_length_pinned(model, context):  # ROPE_YARN: the base of the configured window, not the batch's longest
        for k in itertools.count():
            if not adapt_chunk(model, ledger, lora, optimizer, docs, k, s, context, device, initial):
                return


def lora_optimizer(lora: BatchedLoRA, s: EvalConfig) -> torch.optim.Optimizer:
    """Adam on every document's adapters; AdamW with TTT_WEIGHT_DECAY > 0 (R44). Both are elementwise,
    so a document's rows step as they would alone."""
    betas = (s.ttt_beta1, s.ttt_beta2)
    if s.ttt_weight_decay > 0:
        return torch.optim.AdamW(lora.parameters(), lr=s.ttt_lora_lr, betas=betas, eps=s.ttt_adam_eps,
                                 weight_decay=s.ttt_weight_decay)
    return torch.optim.Adam(lora.parameters(), lr=s.ttt_lora_lr, betas=betas, eps=s.ttt_adam_eps)


def lora_context(s: EvalConfig) -> int:
    """The longest window a chunk is scored with (inputs of its own document only)."""
    return max(s.ttt_eval_seq_len, s.ttt_chunk_size)


def adapt_chunk(model: nn.Module, ledger: ScoreLedger, lora: BatchedLoRA, optimizer: torch.optim.Optimizer,
                docs: list[tuple[int, int]], k: int, s: EvalConfig, context: int, device,
                initial: list[torch.Tensor] | None = None) -> bool:
    """Score chunk ``k`` of every document that has one, then step on it; False when none has.
    ``initial``: the adapters as drawn, for the targets :func:`split_at_min_doc_len` keeps from the steps."""
    windows = {i: w for i, d in enumerate(docs) if (w := chunk_window(d, k, s.ttt_chunk_size, context))}
    if not windows:
        return False
    rows = sorted(windows)
    length = step_length(k, s.ttt_chunk_size, context)
    plain, adapted = split_at_min_doc_len({i: docs[i][0] for i in rows}, windows, s.ttt_min_doc_len)
    with torch.no_grad():
        if plain:  # a document's first targets: its initial adapters, no step yet (PR #1090's short documents)
            with adapters_as(lora, initial), lora.attached(sorted(plain)):
                score_windows(model, ledger, [plain[i] for i in sorted(plain)], device, length)
        if adapted:
            with lora.attached(sorted(adapted)):
                score_windows(model, ledger, [adapted[i] for i in sorted(adapted)], device, length)
    learners = [i for i in rows if chunk_window(docs[i], k + 1, s.ttt_chunk_size, context)]
    if learners:  # a document's last chunk is never trained on: nothing of it is left to score
        optimizer.zero_grad(set_to_none=True)
        with lora.attached(learners):
            chunk_loss(model, ledger, [windows[i] for i in learners], length, device).backward()
        optimizer.step()
    return True


@contextmanager
def adapters_as(lora: BatchedLoRA, values: list[torch.Tensor]):
    """``lora``'s parameters hold ``values`` inside (no copy; the optimizer's state is untouched)."""
    params = list(lora.parameters())
    trained = [p.data for p in params]
    for p, v in zip(params, values):
        p.data = v
    try:
        yield
    finally:
        for p, t in zip(params, trained):
            p.data = t


def split_at_min_doc_len(doc_starts: dict[int, int], windows: dict[int, Window],
                         min_doc_len: int) -> tuple[dict[int, Window], dict[int, Window]]:
    """Each window's targets before its document's target ``min_doc_len - 1`` (scored with the
    document's initial adapters, before any step) and from there on (with the adapted ones), as two
    windows over the same inputs.

    PR #1090 scores documents of fewer than ``TTT_MIN_DOC_LEN`` tokens without TTT steps, but through
    its LoRA-wrapped model: with the random adapters it drew when it built them (B is not zero: they
    moved losses by up to 4e-4 nats in the parity test; the identity init changes nothing). Whether
    a document is that short depends on where the next BOS is, a later token; its target j knows the
    document is long only from j = min_doc_len - 1 on. So its targets before that are scored with
    its initial adapters in every document: all of a short document's, as PR #1090 does; for a long
    one, the first min_doc_len - 1, which PR #1090 scores with the adapters of its first steps where
    a chunk is shorter than that (with chunks at least that long, its first chunk: the initial ones,
    as here)."""
    plain: dict[int, Window] = {}
    adapted: dict[int, Window] = {}
    for i, w in windows.items():
        cut = min(max(w.score_from, doc_starts[i] + min_doc_len - 1), w.end)
        if cut > w.score_from:
            plain[i] = Window(w.start, cut, w.score_from)
        if cut < w.end:
            adapted[i] = Window(w.start, w.end, cut)
    return plain, adapted


def document_batches(docs: list[tuple[int, int]], batch_size: int) -> list[list[tuple[int, int]]]:
    return [docs[i : i + batch_size] for i in range(0, len(docs), batch_size)]


def evaluate_lora_ttt(
    model: nn.Module, tokens: np.ndarray, table: TorchByteTable, s: EvalConfig, bos_id: int, device, seed: int
) -> LedgerResult:
    """Per-document LoRA TTT over every document; batches hold documents of similar length."""
    ledger = ScoreLedger(tokens, table, device)
    docs = sorted(segments(tokens, bos_id), key=lambda d: (d[0] - d[1], d[0]))  # longest first, padding stays small
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    rank, world = rank_and_world()
    for index, batch in enumerate(document_batches(docs, s.ttt_batch_size)):
        if index % world == rank:  # dealt in turn: the long documents come first, so each rank gets some
            adapt_documents(model, ledger, batch, s, device, seed)
    ledger.merge_scored()
    return ledger_result(ledger)
