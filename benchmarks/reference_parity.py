"""Parity of ``pgolf eval`` with the reference ``train_gpt.py``'s own evaluation, on one checkpoint.

The reference script is not part of pgolf: point ``--reference`` at a local copy of
openai/parameter-golf's ``train_gpt.py`` (kept in an ignored folder, never committed). This script

1. trains the reference's own baseline ``GPT`` with its own Muon/Adam split for a few CPU steps on
   the train sample, applies its dtype policy (bf16 model, fp32 linear weights and control tensors:
   the token embedding stays bf16, as in a real run) and saves ``final_model.pt`` exactly as the
   reference does (``torch.save(base_model.state_dict(), ...)``);
2. scores it with the reference's ``eval_val`` and ``build_sentencepiece_luts`` on CPU in fp32 (the
   reference hard-codes CUDA autocast, which does nothing on CPU tensors);
3. scores the same file with ``pgolf eval --checkpoint final_model.pt --preset baseline --json``;
4. does the same for the reference's own int8 export of that checkpoint (its
   ``quantize_state_dict_int8`` + ``torch.save`` + zlib-9, i.e. ``final_model.int8.ptz``), scored by
   the reference through its dequantizer and by ``pgolf eval --artifact``;
5. writes every number and the differences to ``benchmarks/results/reference_parity.json``.

Usage: python benchmarks/reference_parity.py --reference .ref/train_gpt.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[1]


def load_reference(path: Path):
    spec = importlib.util.spec_from_file_location("reference_train_gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # safe: the script's main() is behind a __main__ guard
    return module


def reference_model(ref):
    return ref.GPT(vocab_size=1024, num_layers=9, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=2,
                   tie_embeddings=True, tied_embed_init_std=0.005, logit_softcap=30.0, rope_base=10000.0,
                   qk_gain_init=1.5)


def reference_checkpoint(ref, out: Path, train_glob: Path, steps: int, seed: int) -> list[float]:
    """Train the reference's GPT with the reference's Muon/Adam split for a few CPU steps, then save it
    with the reference's dtype policy (bf16 embedding, fp32 linear and control tensors)."""
    torch.manual_seed(seed)
    model = reference_model(ref)
    names = dict(model.blocks.named_parameters())
    matrices = [p for n, p in names.items() if p.ndim == 2 and not any(c in n for c in ref.CONTROL_TENSOR_NAME_PATTERNS)]
    scalars = [p for n, p in names.items() if p.ndim < 2 or any(c in n for c in ref.CONTROL_TENSOR_NAME_PATTERNS)]
    scalars.append(model.skip_weights)
    optimizers = [
        torch.optim.Adam([model.tok_emb.weight], lr=0.05, betas=(0.9, 0.95), eps=1e-8),
        ref.Muon(matrices, lr=0.04, momentum=0.95, backend_steps=5),
        torch.optim.Adam(scalars, lr=0.04, betas=(0.9, 0.95), eps=1e-8),
    ]
    loader = ref.DistributedTokenLoader(str(train_glob), 0, 1, torch.device("cpu"))
    losses = []
    for _ in range(steps):
        x, y = loader.next_batch(2048, 1024, 1)
        loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.bfloat16()
    for module in model.modules():
        if isinstance(module, ref.CastedLinear):
            module.float()
    ref.restore_low_dim_params_to_fp32(model)
    torch.save(model.state_dict(), out)
    return losses


def reference_int8_artifact(ref, ckpt: Path, out: Path) -> None:
    """The reference's own export: quantize_state_dict_int8, torch.save, zlib level 9."""
    import io
    import zlib

    quant_obj, _ = ref.quantize_state_dict_int8(torch.load(ckpt, map_location="cpu", weights_only=True))
    buf = io.BytesIO()
    torch.save(quant_obj, buf)
    out.write_bytes(zlib.compress(buf.getvalue(), level=9))


def reference_state(ref, path: Path) -> dict:
    """Load weights the way the reference does: its .pt directly, its .ptz through its dequantizer."""
    import io
    import zlib

    if path.suffix == ".ptz":
        obj = torch.load(io.BytesIO(zlib.decompress(path.read_bytes())), map_location="cpu", weights_only=True)
        return ref.dequantize_state_dict_int8(obj)
    return torch.load(path, map_location="cpu", weights_only=True)


def reference_score(ref, ckpt: Path, val: Path, tokenizer: Path, max_tokens: int) -> dict:
    import sentencepiece as spm

    model = reference_model(ref)
    model.load_state_dict(reference_state(ref, ckpt), strict=True)
    model.float()
    tokens = ref.load_validation_tokens(str(val), 1024)[: max_tokens + 1]
    luts = ref.build_sentencepiece_luts(spm.SentencePieceProcessor(model_file=str(tokenizer)), 1024, torch.device("cpu"))
    args = SimpleNamespace(val_batch_size=65536 * 8, train_seq_len=1024)
    t0 = time.perf_counter()
    loss, bpb = ref.eval_val(args, model, 0, 1, torch.device("cpu"), 8, tokens, *luts)
    return {"val_loss": loss, "val_bpb": bpb, "tokens": int(tokens.numel() - 1), "seconds": time.perf_counter() - t0}


def pgolf_score(ckpt: Path, val: Path, tokenizer: Path, max_tokens: int) -> dict:
    kind = "--artifact" if ckpt.suffix == ".ptz" else "--checkpoint"
    cmd = [sys.executable, "-m", "pgolf.cli", "eval", kind, str(ckpt), "--preset", "baseline",
           "--val", str(val), "--tokenizer", str(tokenizer), "--device", "cpu", "--max-tokens", str(max_tokens), "--json"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="path to the reference train_gpt.py")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--max-tokens", type=int, default=65536, help="val tokens to score (whole windows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=30, help="reference training steps (2048 tokens each)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reference_parity.json")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from pgolf.runtime import device_name, git_commit, versions

    val = args.data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"
    tokenizer = args.data / "tokenizers" / "fineweb_1024_bpe.model"
    ref = load_reference(args.reference)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "final_model.pt"
        train_glob = args.data / "datasets" / "fineweb10B_sp1024_trainsample" / "fineweb_train_*.bin"
        train_losses = reference_checkpoint(ref, ckpt, train_glob, args.train_steps, args.seed)
        ptz = Path(tmp) / "final_model.int8.ptz"
        reference_int8_artifact(ref, ckpt, ptz)
        files = {"final_model.pt": ckpt, "final_model.int8.ptz": ptz}
        pairs = {name: (reference_score(ref, path, val, tokenizer, args.max_tokens),
                        pgolf_score(path, val, tokenizer, args.max_tokens)) for name, path in files.items()}
    compared = {
        name: {"reference": theirs, "pgolf": ours,
               "abs_diff_val_loss": abs(theirs["val_loss"] - ours["val_loss"]),
               "abs_diff_val_bpb": abs(theirs["val_bpb"] - ours["val_bpb"])}
        for name, (theirs, ours) in pairs.items()
    }
    result = {
        "what": "pgolf eval vs the reference's own eval_val on the reference's final_model.pt and final_model.int8.ptz (CPU, fp32)",
        "checkpoint": {"trained_by": "reference GPT + Muon/Adam on CPU", "steps": args.train_steps,
                       "tokens_per_step": 2048, "first_loss": train_losses[0], "last_loss": train_losses[-1],
                       "tok_emb_dtype": "bfloat16 (the reference's dtype policy)"},
        "files": compared,
        "within_1e-4": all(c["abs_diff_val_loss"] < 1e-4 and c["abs_diff_val_bpb"] < 1e-4 for c in compared.values()),
        "commit": git_commit(),
        "device": device_name(torch.device("cpu")),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
