"""Pack what a GPU session carries to the device machine, which reaches no network.

The device image has Python 3.12 with PyTorch, numpy, sentencepiece, safetensors, tqdm, matplotlib,
pytest and hypothesis, but not zstandard, brotli or python-minifier; and the data and reference
scripts live only here. This writes (all ignored by git):

* ``.gpu/wheels/``: wheels of the three missing packages for CPython 3.12 on manylinux x86_64,
  within pyproject.toml's ranges (``pip download``: needs PyPI, so run it here, not there);
* ``.gpu/data/``: the tokenizer and the train and val shards, laid out as ``../shared/data`` is,
  so ``PGOLF_SHARED_DATA=.gpu/data`` works on the device;

and checks that ``.ref/`` holds the reference scripts the benchmarks compare with (copies from
openai/parameter-golf, never committed). Then, from the device tool, with ``carry=[".gpu", ".ref"]``:

    bash benchmarks/gpu_session.sh tests train      # one call of at most 10 minutes
    bash benchmarks/gpu_session.sh eval parity      # another

Usage: python benchmarks/gpu_kit.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / ".gpu"
MISSING_ON_DEVICE = ["zstandard>=0.22,<1", "brotli>=1.1,<2", "python-minifier>=2.9,<4"]
DATA_FILES = ["tokenizers/fineweb_1024_bpe.model", "datasets/fineweb10B_sp1024_trainsample",
              "datasets/fineweb10B_sp1024_valprefix"]
REFERENCE_SCRIPTS = {
    ".ref/train_gpt.py": "train_gpt.py (the challenge's baseline script)",
    ".ref/r15_train_gpt_v5.py": "records/track_10min_16mb/2026-03-19_smeargate_orthoinit_muonwd/train_gpt_v5.py (R15)",
    ".ref/pr160_train_gpt.py": "records/track_10min_16mb/2026-03-19_ChaseNorton/train_gpt.py at refs/pull/160/head (PR #160)",
}


def download_wheels(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps", "--python-version", "3.12",
           "--implementation", "cp", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
           "-d", str(folder), *MISSING_ON_DEVICE]
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit("gpu_kit: pip download failed (it needs PyPI)")


def copy_data(source: Path, target: Path) -> None:
    for item in DATA_FILES:
        src, dst = source / item, target / item
        if not src.exists():
            raise SystemExit(f"gpu_kit: {src} not found (give --data the shared data folder)")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)


def missing_references() -> list[str]:
    return [f"{path}: {what}" for path, what in REFERENCE_SCRIPTS.items() if not (REPO / path).is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    args = parser.parse_args(argv)
    download_wheels(KIT / "wheels")
    copy_data(args.data, KIT / "data")
    size = sum(p.stat().st_size for p in KIT.rglob("*") if p.is_file())
    print(f"gpu_kit: {KIT} holds {size / 2**20:.1f} MiB: " + ", ".join(sorted(p.name for p in (KIT / "wheels").iterdir())))
    missing = missing_references()
    for line in missing:
        print(f"gpu_kit: missing {line}; the benchmarks that compare with it will fail", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
