#!/usr/bin/env bash
# The GPU checks on one GPU, in parts. Give a part a time limit as PART:SECONDS (it is stopped there
# and the next part runs), and read each part's time from the summary line it prints.
#
# Prepare here (needs PyPI and ../shared/data): python benchmarks/gpu_kit.py
# Then, through the device tool, carrying the kit and the reference scripts. The device gets a copy
# of the working tree whose .git may be stale, so name the commit (git rev-parse HEAD) for the JSON:
#   run(command="PGOLF_GIT_COMMIT=<hash> bash benchmarks/gpu_session.sh tests train", carry=[".gpu", ".ref"])
#   run(command="PGOLF_GIT_COMMIT=<hash> bash benchmarks/gpu_session.sh eval parity", carry=[".gpu", ".ref"])
#   run(command="PGOLF_GIT_COMMIT=<hash> bash benchmarks/gpu_session.sh r15 final", carry=[".gpu", ".ref"])
# Each part writes <part>.log and its JSON results into $OUT; copy the JSON into benchmarks/results/
# and commit it. A part that fails is reported and the next one still runs. The device tool brings
# back 8 files at most: with PACK=FILE everything goes into that one archive, rewritten after each
# part: R=$OUT; OUT=/tmp/g PACK=$R/gpu_results.tar.gz bash benchmarks/gpu_session.sh sliding:120 train:300
#
# Parts:
#   check   no GPU needed (run it here first): the kit and reference scripts are there, and each
#           comparison's configuration is one its reference script can run
#   tests   tests/gpu but its bench tests (backend equivalence, fused kernels in bf16, compile without
#           recompilation, doctor) and the fused kernels' CPU-interpreted tests, run for real
#   train   pgolf bench train --preset baseline against the reference train_gpt.py (target: >= 1.5x tokens/s)
#   sliding benchmarks/sliding_eval.py alone (the first part of eval)
#   eval    benchmarks/sliding_eval.py (PR #160's and R15's own sliding functions beside pgolf's) and pgolf bench eval, R15 preset at stride 64, against the
#           R15 record script's sliding evaluation (target: >= 3x tokens/s)
#   parity  benchmarks/train_parity.py: 200 steps of pgolf and of the reference, seeds 1 and 2
#           (target: pgolf's loss within the reference's run-to-run spread)
#   r15     pgolf bench train --preset smeargate_orthoinit_muonwd against the R15 script
#   final   a short compiled pgolf train of the R15 preset: the warm-up compiles the sliding
#           graph (warmup_sliding_batch:) and the final sliding phase's time is logged
#   fused   the fused Triton kernels (FUSED_CE, FUSED_MLP): benchmarks/fused_kernels.py at the
#           sp8192 records' shapes and at vocab 1024,
#           and pgolf bench train of baseline + LeakyReLU^2 with the kernels off and on
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/pgolf-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PGOLF_SHARED_DATA="$PWD/.gpu/data" PYTHONUNBUFFERED=1
D=$PGOLF_SHARED_DATA
# The device's copy of the tree can carry a stale .git (seen there: HEAD a commit behind the tree it
# ran), so where the caller names the commit, git is not asked and that commit is the one recorded.
[ -n "${PGOLF_GIT_COMMIT:-}" ] && export GIT_DIR=/nonexistent
PY=${PYTHON:-python3}
DATA=(--set "DATA_PATH=$D/datasets/fineweb10B_sp1024_trainsample"
      --set "VAL_FILES=$D/datasets/fineweb10B_sp1024_valprefix/fineweb_val_000000.bin"
      --set "TOKENIZER_PATH=$D/tokenizers/fineweb_1024_bpe.model")
R15=smeargate_orthoinit_muonwd

setup() {
    [ -d .gpu/wheels ] && [ -d .gpu/data ] || { echo "gpu_session: .gpu/ missing: run benchmarks/gpu_kit.py here and carry .gpu"; return 1; }
    command -v nvidia-smi >/dev/null || { echo "gpu_session: no GPU here (only the check part runs)"; return; }
    "$PY" -m pip install --quiet --no-index --find-links .gpu/wheels zstandard brotli python-minifier || return 1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
}

part_check() {
    for f in .ref/train_gpt.py .ref/r15_train_gpt_v5.py .ref/pr160_train_gpt.py "$D/tokenizers/fineweb_1024_bpe.model"; do
        [ -f "$f" ] || { echo "missing $f"; return 1; }
    done
    "$PY" - "$D" <<'PYTHON'
import sys
from pathlib import Path

from pgolf.bench.reference import check_reference_config
from pgolf.presets import build_config

d = Path(sys.argv[1])
sets = [f"DATA_PATH={d}/datasets/fineweb10B_sp1024_trainsample", f"TOKENIZER_PATH={d}/tokenizers/fineweb_1024_bpe.model",
        f"VAL_FILES={d}/datasets/fineweb10B_sp1024_valprefix/fineweb_val_000000.bin"]
for preset, script, mode, extra in [("baseline", "train_gpt.py", "train", []),
                                    ("smeargate_orthoinit_muonwd", "r15_train_gpt_v5.py", "train", []),
                                    ("smeargate_orthoinit_muonwd", "r15_train_gpt_v5.py", "eval", ["EVAL_STRIDE=64"])]:
    cfg = build_config(preset, sets + extra, environ={})
    check_reference_config(cfg, Path(".ref", script).read_text(), mode)
    print(f"ok: {preset} {mode} can be compared with .ref/{script}")
PYTHON
}
# The bench tests are left to the train and eval parts, which run the same commands at full size.
part_tests() {
    "$PY" -m pytest -q -p no:cacheprovider -rs -k "not bench" tests/gpu tests/kernels tests/model/test_fused_kernels.py
}
part_train() { "$PY" -m pgolf.cli bench train --preset baseline --reference .ref/train_gpt.py "${DATA[@]}" --out "$OUT" ${TRAIN_STEPS:+--steps $TRAIN_STEPS --warmup $TRAIN_STEPS}; }
part_eval() {
    part_sliding
    "$PY" -m pgolf.cli bench eval --preset "$R15" --reference .ref/r15_train_gpt_v5.py "${DATA[@]}" --set EVAL_STRIDE=64 --out "$OUT"
}
part_sliding() {
    # 131,072 targets: PR #160's 512 windows one by one, R15's 2,048 in 64 batches (a few per side on CPU is too little on a GPU)
    "$PY" benchmarks/sliding_eval.py --script r15=.ref/r15_train_gpt_v5.py --script pr160=.ref/pr160_train_gpt.py --data "$D" \
        --max-tokens "${SLIDING_TARGETS:-131072}" --out "$OUT/sliding_eval.json"
}
# Four runs of a few minutes each. If a call's time runs out, put the train_parity.json that came
# back into .gpu/ and run the part again: it resumes, doing only the runs the file lacks.
part_parity() {
    if [ -f .gpu/train_parity.json ]; then cp .gpu/train_parity.json "$OUT/train_parity.json"; fi
    "$PY" benchmarks/train_parity.py --reference .ref/train_gpt.py --data "$D" --out "$OUT/train_parity.json" --resume
}
part_r15() { "$PY" -m pgolf.cli bench train --preset "$R15" --reference .ref/r15_train_gpt_v5.py "${DATA[@]}" --out "$OUT"; }
part_final() {
    "$PY" -m pgolf.cli train --preset "$R15" "${DATA[@]}" --set ITERATIONS=50 --set VAL_LOSS_EVERY=0 \
        --set MAX_WALLCLOCK_SECONDS=0 --runs-dir /tmp/pgolf-gpu-runs
}

part_fused() {  # the kernels' tests run in the tests part
    "$PY" benchmarks/fused_kernels.py --out "$OUT/fused_kernels_vocab8192.json" || return 1
    "$PY" benchmarks/fused_kernels.py --vocab 1024 --out "$OUT/fused_kernels_vocab1024.json" || return 1
    local leaky=(--set MLP_ACTIVATION=leaky_relu2 --steps 10)
    mkdir -p "$OUT/unfused" "$OUT/fused"
    "$PY" -m pgolf.cli bench train --preset baseline "${DATA[@]}" "${leaky[@]}" --out "$OUT/unfused" || return 1
    "$PY" -m pgolf.cli bench train --preset baseline "${DATA[@]}" "${leaky[@]}" --set FUSED_CE=1 --set FUSED_MLP=1 --out "$OUT/fused"
}

# One part alone, in its own process, so that `timeout` can stop it (the loop below calls this).
if [ "${1:-}" = "--one" ]; then "part_$2"; exit $?; fi

[ $# -gt 0 ] || { sed -n '/^set -uo/q;2,$p' "$0"; exit 2; }
for item in "$@"; do
    part=${item%%:*}
    declare -F "part_$part" >/dev/null || { echo "gpu_session: unknown part '$part' (check tests train sliding eval parity r15 final fused)"; exit 2; }
done
setup > "$OUT/setup.log" 2>&1
code=$?
cat "$OUT/setup.log"
[ $code -eq 0 ] || exit 2
# The device tool brings back 8 files at most: everything also goes into one archive, rewritten after
# each part, so what ran comes back even when the call's time runs out in a later part.
pack() { tar -czf "$PACK.part" -C "$(dirname "$OUT")" "$(basename "$OUT")" && mv "$PACK.part" "$PACK"; }
status=0
for item in "$@"; do
    part=${item%%:*}
    limit=${item#*:}; [ "$limit" = "$item" ] && limit=0  # part:SECONDS stops the part after SECONDS
    start=$SECONDS
    if [ "$limit" -gt 0 ]; then timeout -k 10 "$limit" bash "$0" --one "$part" > "$OUT/$part.log" 2>&1
    else bash "$0" --one "$part" > "$OUT/$part.log" 2>&1; fi
    code=$?
    [ $code -eq 124 ] && echo "gpu_session: $part stopped at its limit of $limit s" >> "$OUT/$part.log"
    echo "gpu_session: $part exited $code after $((SECONDS - start)) s (log: $part.log)"
    tail -n 15 "$OUT/$part.log"
    [ $code -eq 0 ] || status=1
    [ -n "${PACK:-}" ] && pack
done
exit $status
