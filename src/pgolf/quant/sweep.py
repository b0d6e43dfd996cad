"""``pgolf quant sweep``: every (policy, compressor) pair scored by a real round trip.

For each policy the checkpoint is quantized once; for each compressor the artifact is written
(export/artifact.py sizes it: bytes_model is the file, bytes_total adds the code, headroom to the
16,000,000-byte cap; the code count is the one the checkpoint's run recorded, or a given bundle's,
and is measured once every artifact is written, so every row counts the same code), read back from
disk and dequantized. Decoded weights must equal the
in-memory quantized weights bit for bit (checked for every pair), so val_bpb is evaluated once per
policy with eval/evaluate.py; the quantization gap is that minus the float checkpoint's val_bpb.
Results go to a table on stdout plus ``sweep.csv``, ``sweep.json`` and ``sweep.png`` (val_bpb
against bytes_total) in ``--out``.

A sweep entry is a policy with optional method prefixes, in any order: ``gptq:`` rounds with GPTQ
on calibration Hessians (collected once, from the float checkpoint, on training shards or on the
model's own samples) and ``lqer:`` adds LQER corrections (``LQER_*`` settings of the config), e.g.
``gptq:int6``, ``gptq:lqer:embed=int8:sd20,*=int6:sd12.85``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pgolf.errors import PgolfError
from pgolf.export.artifact import CODE_KIND_NOTES, SIZE_CAP_BYTES, SizeReport, size_report
from pgolf.export.codecs import AUTO, CODEC_IDS, CODECS
from pgolf.export.container import read_artifact, write_artifact
from pgolf.files import atomic_target, atomic_write
from pgolf.config import QuantConfig
from pgolf.quant.int8 import dequantize
from pgolf.quant.policy import parse_policy, quantize_for_export, quantized_count

METHOD_PREFIXES = ("gptq", "lqer")


@dataclass(frozen=True)
class SweepSpec:
    """One sweep entry: a policy and whether GPTQ and LQER apply on top of it."""

    policy: str
    gptq: bool = False
    lqer: bool = False


def parse_sweep_spec(text: str) -> SweepSpec:
    """``[gptq:][lqer:]POLICY`` (prefixes in any order); PgolfError naming a bad policy."""
    rest, methods = text.strip(), set()
    while True:
        head, sep, tail = rest.partition(":")
        if not sep or head.strip().lower() not in METHOD_PREFIXES:
            break
        methods.add(head.strip().lower())
        rest = tail
    parse_policy(rest)
    return SweepSpec(rest, "gptq" in methods, "lqer" in methods)


@dataclass(frozen=True)
class SweepRow:
    policy: str
    compressor: str
    bytes_model: int
    bytes_code: int
    bytes_total: int
    headroom: int
    code_kind: str  # "package" or "bundle" (pgolf.export.artifact.CODE_KIND_NOTES)
    code_source: str  # what was counted: "bundle train_gpt.py", "85 pgolf module files imported, by its run", ...
    val_bpb: float
    quant_gap_bpb: float
    quantized_tensors: int  # 0: the policy kept every tensor as it was (all at or under its small= size)


def check_compressors(names: list[str]) -> list[str]:
    for n in names:
        if n != AUTO and n not in CODEC_IDS:
            raise PgolfError(f"--compressors: unknown compressor {n!r} (known: {', '.join(CODEC_IDS)}, {AUTO})")
        if n in CODEC_IDS and not CODECS[CODEC_IDS[n]].available():
            raise PgolfError(f"--compressors: {n} is not available on this machine")
    return names


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], where: str) -> None:
    for name, t in a.items():
        if name not in b or t.dtype != b[name].dtype or not torch.equal(t, b[name]):
            raise PgolfError(f"{where}: tensor {name!r} does not round-trip bit for bit")


def run_sweep(
    state: dict, policies: list[str], compressors: list[str], score, out_dir: Path, hessians=None,
    quant: QuantConfig | None = None, size_of=size_report,
) -> tuple[float, list[SweepRow]]:
    """``score(state_dict) -> val_bpb``; artifacts are written to ``out_dir``.

    ``hessians() -> {name: H}`` provides the calibration Hessians of ``gptq:`` entries (called at
    most once); ``quant`` gives the LQER settings of ``lqer:`` entries (default: QuantConfig());
    ``size_of(path) -> SizeReport`` sizes each artifact (default: this process's code count).
    """
    specs = [parse_sweep_spec(p) for p in policies]
    check_compressors(compressors)
    if any(sp.gptq for sp in specs) and hessians is None:
        raise PgolfError("a gptq: sweep entry needs calibration Hessians")
    quant = quant or QuantConfig()
    float_bpb = score(state)
    scored = []
    cached: dict = {}
    for i, (policy, spec) in enumerate(zip(policies, specs)):
        if spec.gptq and "h" not in cached:
            cached["h"] = hessians()
        quantized = quantize_for_export(
            state, quant, cached.get("h") if spec.gptq else None, policy=spec.policy, gptq=spec.gptq, lqer=spec.lqer
        )
        expected = dequantize(quantized)
        count = quantized_count(quantized)
        bpb = None
        for codec in compressors:
            path = out_dir / f"sweep_{i}_{codec}.pgolf"
            write_artifact(path, quantized, {"policy": policy}, codec)
            loaded = dequantize(read_artifact(path)[0])
            _same_weights(expected, loaded, str(path))
            if bpb is None:
                bpb = score(loaded)
            scored.append((path, policy, codec, bpb, count))
    # sized last: modules imported on the way (GPTQ, LQER) count in every row alike
    rows = [sweep_row(policy, codec, size_of(path), bpb, bpb - float_bpb, count) for path, policy, codec, bpb, count in scored]
    return float_bpb, rows


def sweep_row(policy: str, codec: str, size: SizeReport, bpb: float, gap: float, count: int) -> SweepRow:
    return SweepRow(policy, codec, size.bytes_model, size.bytes_code, size.bytes_total, size.headroom, size.code_kind,
                    size.code_source, bpb, gap, count)


def format_table(float_bpb: float, rows: list[SweepRow]) -> str:
    """The rows, with the size columns in the order and under the labels of every verb
    (:data:`pgolf.export.artifact.SIZE_FIELDS`), then what the code count is."""
    head = (f"{'bytes_model':>12} {'bytes_code':>12} {'bytes_total':>12} {'headroom':>12} {'val_bpb':>10} {'gap':>9} "
            f"{'quantized':>9}  compressor  policy")
    lines = [f"float checkpoint val_bpb {float_bpb:.6f}; cap {SIZE_CAP_BYTES:,} bytes", head]
    for r in rows:
        lines.append(
            f"{r.bytes_model:>12,} {r.bytes_code:>12,} {r.bytes_total:>12,} {r.headroom:>12,} {r.val_bpb:>10.6f} "
            f"{r.quant_gap_bpb:>+9.6f} {r.quantized_tensors:>9}  {r.compressor:<10}  {r.policy}"
        )
    for kind, source in dict.fromkeys((r.code_kind, r.code_source) for r in rows):
        lines.append(f"bytes_code: {kind}: {source}; {CODE_KIND_NOTES[kind]}")
    return "\n".join(lines)


def nothing_quantized_policies(rows: list[SweepRow]) -> list[str]:
    """The policies that kept every tensor as it was: their score is the float checkpoint's."""
    return list(dict.fromkeys(r.policy for r in rows if r.quantized_tensors == 0))


def write_outputs(float_bpb: float, rows: list[SweepRow], out_dir: Path) -> list[Path]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(SweepRow.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    atomic_write(out_dir / "sweep.csv", buf.getvalue().encode())
    doc = {"float_val_bpb": float_bpb, "size_cap_bytes": SIZE_CAP_BYTES, "rows": [asdict(r) for r in rows]}
    atomic_write(out_dir / "sweep.json", (json.dumps(doc, indent=2) + "\n").encode())
    _plot(float_bpb, rows, out_dir / "sweep.png")
    return [out_dir / "sweep.csv", out_dir / "sweep.json", out_dir / "sweep.png"]


def draw_sweep(ax, float_bpb: float, rows: list[SweepRow]) -> None:
    """val_bpb against bytes_total, zoomed to the points (each labelled with its policy); the cap
    line shows only when it falls inside that range, else the title says it is off the range."""
    from matplotlib.ticker import FuncFormatter

    for codec in dict.fromkeys(r.compressor for r in rows):
        pts = [r for r in rows if r.compressor == codec]
        ax.scatter([r.bytes_total for r in pts], [r.val_bpb for r in pts], label=codec)
        for r in pts:
            ax.annotate(r.policy, (r.bytes_total, r.val_bpb), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axhline(float_bpb, color="gray", linestyle="--", label="float checkpoint")
    lo, hi = _byte_range(rows)
    ax.set_xlim(lo, hi)
    if lo <= SIZE_CAP_BYTES <= hi:
        ax.axvline(SIZE_CAP_BYTES, color="red", linestyle=":", label="16 MB cap")
    else:
        ax.set_title(f"the {SIZE_CAP_BYTES:,}-byte cap is outside this range", fontsize=9)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set_xlabel("bytes_total (model + code)")
    ax.set_ylabel("val_bpb")


def _byte_range(rows: list[SweepRow]) -> tuple[float, float]:
    """The points' bytes_total range with a margin: 8% of the span, at least 1% of the largest."""
    sizes = [r.bytes_total for r in rows]
    margin = max(0.08 * (max(sizes) - min(sizes)), 0.01 * max(sizes), 1.0)
    return min(sizes) - margin, max(sizes) + margin


def _plot(float_bpb: float, rows: list[SweepRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    draw_sweep(ax, float_bpb, rows)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
