"""``pgolf quant sweep`` on a checkpoint trained here: table, CSV, JSON and PNG, sizes measured."""

from __future__ import annotations

import csv
import json
import os

import safetensors.torch
import torch

from pgolf.model.gpt import build_model
from pgolf.presets import tiny_cpu


def test_sweep_writes_every_pair_with_measured_sizes(shared_data, tmp_path, run_pgolf):
    cfg = tiny_cpu()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ckpt = tmp_path / "checkpoint.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(ckpt), metadata={"pgolf_config": cfg.to_json()})
    code, out, err = run_pgolf([
        "quant", "sweep", str(ckpt), "--schemes", "int8", "int4g32,small=0", "--compressors", "zlib,zstd",
        "--val", str(shared_data / "datasets" / "fineweb10B_sp1024_valprefix" / "fineweb_val_000000.bin"),
        "--tokenizer", str(shared_data / "tokenizers" / "fineweb_1024_bpe.model"), "--max-tokens", "4096",
        "--out", str(tmp_path / "sweep"), "--json",  # --out is created
    ])
    assert code == 0, err
    ckpt_dir, tmp_path = tmp_path, tmp_path / "sweep"
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert json.loads(out.splitlines()[-1])["rows"] == rows
    # tiny_cpu's tensors are all at or under 65,536 elements: int8 keeps every one, and says so
    state = model.state_dict()
    assert [r["quantized_tensors"] for r in rows[::2]] == [0, sum(t.ndim == 2 for t in state.values())]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"'int8' quantizes none of the {len(state)} tensors" in warnings[0], err
    assert [(r["policy"], r["compressor"]) for r in rows] == [
        ("int8", "zlib"), ("int8", "zstd"), ("int4g32,small=0", "zlib"), ("int4g32,small=0", "zstd")]
    for i, r in enumerate(rows):
        path = tmp_path / f"sweep_{i // 2}_{r['compressor']}.pgolf"
        assert r["bytes_model"] == os.path.getsize(path)
        assert r["bytes_total"] == r["bytes_model"] + r["bytes_code"] and r["headroom"] == 16_000_000 - r["bytes_total"]
        assert r["code_kind"] == "package"  # a loose checkpoint: no run recorded its code, this process's modules count
    # int4 on every matrix loses more than int8 (which keeps these small matrices as fp16).
    assert rows[2]["quant_gap_bpb"] > rows[0]["quant_gap_bpb"]
    assert len(list(csv.DictReader((tmp_path / "sweep.csv").open()))) == 4
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bytes_total" in out and "headroom" in out
    code, _, err = run_pgolf(["quant", "sweep", str(ckpt), "--schemes", "int9", "--out", str(ckpt_dir)])
    assert code == 2 and "int9" in err


def test_the_plot_zooms_to_the_points_and_labels_each_one():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pgolf.quant.sweep import SweepRow, draw_sweep

    # a small model: every artifact about 100 KB, far under the 16 MB cap
    rows = [SweepRow(policy, codec, size, 50_000, size + 50_000, 16_000_000 - size - 50_000, "package", "x", bpb, bpb - 2.0, 10)
            for policy, codec, size, bpb in [("int8", "zlib", 61_000, 2.01), ("int8", "zstd", 58_000, 2.01),
                                              ("int6", "zlib", 47_000, 2.05), ("int4", "zlib", 33_000, 2.3)]]
    fig, ax = plt.subplots()
    draw_sweep(ax, 2.0, rows)
    lo, hi = ax.get_xlim()
    sizes = [r.bytes_total for r in rows]
    assert lo <= min(sizes) and hi >= max(sizes)
    assert hi - lo < 2 * (max(sizes) - min(sizes))  # the points spread over the axis, not bunched at x~0
    assert sorted(t.get_text() for t in ax.texts) == sorted(r.policy for r in rows)
    assert "16,000,000-byte cap is outside" in ax.get_title()
    plt.close(fig)
