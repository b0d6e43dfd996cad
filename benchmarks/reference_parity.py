"""Parity of ``pgolf eval`` with the reference ``train_gpt.py``'s own evaluation, on one checkpoint.

The reference script is not part of pgolf: point ``--reference`` at a local copy of
openai/parameter-golf's ``train_gpt.py`` (kept in an ignored folder, never committed). This script

1. builds the reference's own ``GPT`` (baseline shape unless overridden), applies its dtype policy
   (bf16 model, fp32 linear weights and control tensors: the token embedding stays bf16, as in a
   real run), gives every weight a non-trivial random value and saves ``final_model.pt`` exactly as
   the reference does (``torch.save(base_model.state_dict(), ...)``);
2. scores it with the reference's ``eval_val`` and ``build_sentencepiece_luts`` on CPU in fp32 (the
   reference hard-codes CUDA autocast, which does nothing on CPU tensors);
3. scores the same file with ``pgolf eval --checkpoint final_model.pt --preset baseline --json``;
4. writes both numbers and their differences to ``benchmarks/results/reference_parity.json``.

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


def reference_checkpoint(ref, out: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = ref.GPT(vocab_size=1024, num_layers=9, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=2,
                    tie_embeddings=True, tied_embed_init_std=0.005, logit_softcap=30.0, rope_base=10000.0,
                    qk_gain_init=1.5).bfloat16()
    for module in model.modules():
        if isinstance(module, ref.CastedLinear):
            module.float()
    ref.restore_low_dim_params_to_fp32(model)
    with torch.no_grad():  # a trained-looking checkpoint: every tensor carries signal
        for name, p in model.named_parameters():
            scale = 0.02 if p.ndim == 2 else 0.1
            p.add_((scale * torch.randn(p.shape)).to(p.dtype))
        model.tok_emb.weight.mul_(40.0)
    torch.save(model.state_dict(), out)


def reference_score(ref, ckpt: Path, val: Path, tokenizer: Path, max_tokens: int) -> dict:
    import sentencepiece as spm

    model = ref.GPT(vocab_size=1024, num_layers=9, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=2,
                    tie_embeddings=True, tied_embed_init_std=0.005, logit_softcap=30.0, rope_base=10000.0,
                    qk_gain_init=1.5)
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True), strict=True)
    model.float()
    tokens = ref.load_validation_tokens(str(val), 1024)[: max_tokens + 1]
    luts = ref.build_sentencepiece_luts(spm.SentencePieceProcessor(model_file=str(tokenizer)), 1024, torch.device("cpu"))
    args = SimpleNamespace(val_batch_size=65536 * 8, train_seq_len=1024)
    t0 = time.perf_counter()
    loss, bpb = ref.eval_val(args, model, 0, 1, torch.device("cpu"), 8, tokens, *luts)
    return {"val_loss": loss, "val_bpb": bpb, "tokens": int(tokens.numel() - 1), "seconds": time.perf_counter() - t0}


def pgolf_score(ckpt: Path, val: Path, tokenizer: Path, max_tokens: int) -> dict:
    cmd = [sys.executable, "-m", "pgolf.cli", "eval", "--checkpoint", str(ckpt), "--preset", "baseline",
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
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reference_parity.json")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from pgolf.runtime import device_name, git_commit, versions

    val = args.data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"
    tokenizer = args.data / "tokenizers" / "fineweb_1024_bpe.model"
    ref = load_reference(args.reference)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "final_model.pt"
        reference_checkpoint(ref, ckpt, args.seed)
        theirs = reference_score(ref, ckpt, val, tokenizer, args.max_tokens)
        ours = pgolf_score(ckpt, val, tokenizer, args.max_tokens)
    result = {
        "what": "pgolf eval vs the reference eval_val on one reference-format final_model.pt (CPU, fp32)",
        "reference": theirs,
        "pgolf": ours,
        "abs_diff_val_loss": abs(theirs["val_loss"] - ours["val_loss"]),
        "abs_diff_val_bpb": abs(theirs["val_bpb"] - ours["val_bpb"]),
        "within_1e-4": abs(theirs["val_loss"] - ours["val_loss"]) < 1e-4 and abs(theirs["val_bpb"] - ours["val_bpb"]) < 1e-4,
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
