"""``pgolf quant inspect``: per-tensor, per-role and per-group bytes sum exactly to the file size."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pgolf.export.codecs import available_codecs
from pgolf.export.container import write_artifact
from pgolf.export.inspect import attribute_bytes, group_totals, role_totals
from pgolf.quant.policy import quantize_state_dict_policy


def artifact(tmp_path, codec, policy="embed=int8,attn=int6,mlp=int5g32,small=0"):
    g = torch.Generator().manual_seed(0)
    sd = {"tok_emb.weight": torch.randn(64, 64, generator=g), "blocks.0.attn.c_q.weight": torch.randn(64, 64, generator=g),
          "blocks.0.mlp.fc.weight": torch.randn(128, 64, generator=g), "blocks.0.attn_scale": torch.ones(64)}
    path = tmp_path / f"m.{codec}"
    write_artifact(path, quantize_state_dict_policy(sd, policy), {"x": 1}, codec, shuffle=True)
    return path


@pytest.mark.parametrize("codec", [c for c in available_codecs() if c != "brotli"])
def test_rows_and_groups_sum_to_the_file_size(tmp_path, codec):
    path = artifact(tmp_path, codec)
    rows = attribute_bytes(path)
    assert sum(r.file_bytes for r in rows) == os.path.getsize(path)
    assert sum(group_totals(rows).values()) == os.path.getsize(path)
    assert {"header", "metadata", "mlp.codes.int5", "attn.codes.int6"} <= set(group_totals(rows))


def test_cli_prints_the_exact_total(tmp_path, run_pgolf):
    path = artifact(tmp_path, "zlib", "int8")
    code, out, _ = run_pgolf(["quant", "inspect", str(path)])
    assert code == 0
    total_line = [line for line in out.splitlines() if "total (zlib" in line][0]
    assert int(total_line.split()[0].replace(",", "")) == os.path.getsize(path)
    model_line = [line for line in out.splitlines() if line.startswith("bytes_model")][0]
    assert int(model_line.split()[1].replace(",", "")) == os.path.getsize(path)
    code, out, _ = run_pgolf(["quant", "inspect", str(path), "--json"])
    doc = json.loads(out)
    assert code == 0 and doc["file_bytes"] == doc["attributed_bytes"] == os.path.getsize(path) and doc["codec"] == "zlib"
    assert sum(doc["groups"].values()) == sum(doc["roles"].values()) == sum(t["file_bytes"] for t in doc["tensors"]) == os.path.getsize(path)
    assert doc["size"]["bytes_model"] == os.path.getsize(path)
    code, _, err = run_pgolf(["quant", "inspect", str(tmp_path / "missing")])
    assert code == 2 and "not found" in err


@pytest.mark.parametrize("codec, policy", [("zlib", "int8"), ("zstd", "embed=int8,attn=int6,mlp=int5g32,small=0")])
def test_role_totals_split_the_file_by_tensor_role(tmp_path, codec, policy):
    path = artifact(tmp_path, codec, policy)
    roles = role_totals(attribute_bytes(path))
    assert sum(roles.values()) == os.path.getsize(path)
    assert {"embed", "attn", "mlp", "container"} <= set(roles) and all(b > 0 for k, b in roles.items() if k != "other")
