#!/usr/bin/env bash
# Same-sitting comparison with PyTorch on bench_moe: ROUNDS interleaved rounds of
#   titan, 8 ranks (shard 8 x ep 8)   vs  torch FSDP2 over gloo, 8 processes  (anchors/torch_train_tps.py fsdp 8)
#   titan, 1 rank                     vs  torch eager, 1 process, 2 threads   (anchors/torch_train_tps.py single)
# Each of our runs goes just before the torch run it is compared with, and every torch job is followed by a pause
# (a run started right after torch's 8-process job measured 5-10% slower). Prints one line per round, the median
# ratios, and one JSON line per round.
#
#   PYTHON=/tmp/ref/bin/python scripts/compare_torch.sh
#   ROUNDS=5 PAUSE=10 ANCHORS=../shared/anchors PYTHON=... PYTHON_FSDP=... scripts/compare_torch.sh
#
# PYTHON (torch + transformers) runs the eager anchor, PYTHON_FSDP (a command, default $PYTHON) the FSDP one. The FSDP
# anchor needs transformers >= 5: 4.x's per-expert loop skips experts that got no tokens, so FSDP2's reduce-scatter
# sizes differ between ranks and gloo aborts. Eager runs faster with 4.57 than with 5.24 here (4,505-4,644 against
# 4,379-4,412 tokens/s back to back), so compare with the faster one, e.g.
#   PYTHON=/tmp/ref/bin/python PYTHON_FSDP="env PYTHONPATH=/tmp/tf5 /tmp/ref/bin/python" scripts/compare_torch.sh
# Ours: the same 16 x 256-token global batch, tokens/s over steps 4-13 from rank 0's metrics.jsonl; torch: over its
# steps 3-10.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
PAUSE=${PAUSE:-10}
PYTHON=${PYTHON:-python3}
PYTHON_FSDP=${PYTHON_FSDP:-$PYTHON}
ANCHORS=${ANCHORS:-../shared/anchors}
BUILD_PATH=${BUILD_PATH:-.build}
OUT=${OUT:-$(mktemp -d /tmp/titan-compare.XXXXXX)}
mkdir -p "$OUT"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "compare_torch.sh: ROUNDS must be a positive integer, got '$ROUNDS'" >&2; exit 1; }
script="$ANCHORS/torch_train_tps.py"
[ -f "$script" ] || { echo "compare_torch.sh: $script not found (set ANCHORS to the anchors folder)" >&2; exit 1; }
"$PYTHON" -c 'import torch, transformers' 2>/dev/null ||
    { echo "compare_torch.sh: $PYTHON cannot import torch and transformers (set PYTHON)" >&2; exit 1; }
# shellcheck disable=SC2086  # the python command may be several words (env VAR=... python)
$PYTHON_FSDP -c 'import torch, transformers' 2>/dev/null ||
    { echo "compare_torch.sh: $PYTHON_FSDP cannot import torch and transformers (set PYTHON_FSDP)" >&2; exit 1; }
command -v jq >/dev/null || { echo "compare_torch.sh: needs jq (apt-get install -y jq)" >&2; exit 1; }
scripts/bootstrap.sh   # the system libraries the build links (libzmq, OpenBLAS, BLIS)
if ! log=$(swift build -c release --scratch-path "$BUILD_PATH" --product titan 2>&1); then
    echo "$log" >&2; echo "compare_torch.sh: build failed" >&2; exit 1
fi
TITAN="$BUILD_PATH/release/titan"

tps() {  # tokens/s of steps 4.. from a run folder's metrics.jsonl
    jq -s '[.[] | select(.step > 3)] | ((map(.tokens_per_sec * .step_time_s) | add) / (map(.step_time_s) | add)) | floor' \
        "$1/metrics.jsonl"
}
torch_tps() {  # log python-command mode [world]: runs the anchor, prints its tokens/s
    local log=$1 python=$2; shift 2
    # shellcheck disable=SC2086  # the python command may be several words (env VAR=... python)
    if ! $python "$script" "$@" >"$log" 2>&1; then
        tail -5 "$log" >&2; echo "compare_torch.sh: torch_train_tps.py $* failed (log: $log)" >&2; exit 1
    fi
    local tps
    tps=$(grep -o '[0-9][0-9]* tokens/s' "$log" | tail -1 | cut -d' ' -f1 || true)
    [ -n "$tps" ] || { echo "compare_torch.sh: no 'N tokens/s' line in $log" >&2; exit 1; }
    echo "$tps"
}
ours() {  # folder, then titan arguments
    local dir="$OUT/$1"; shift
    "$@" --job.dump_folder "$dir" >"$dir.log" 2>&1 || { cat "$dir.log" >&2; exit 1; }
    tps "$dir"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
median() { tr ' ' '\n' | sort -g | awk 'NF { v[++n] = $1 } END { print (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }'; }
printf '%-6s %9s %11s %6s %9s %11s %6s %12s\n' round ours_8 torch_fsdp2 ratio ours_1 torch_eager ratio ours_8/ours_1
r8s="" r1s="" scs="" lines=()
for r in $(seq "$ROUNDS"); do
    o8=$(ours "r$r-8ranks" "$TITAN" launch --ranks 8 -- train --config bench_moe --training.steps 13 \
        --training.local_batch_size 2 --parallelism.data_parallel_shard_degree 8 --parallelism.expert_parallel_degree 8)
    f8=$(torch_tps "$OUT/r$r-torch-fsdp.log" "$PYTHON_FSDP" fsdp 8); sleep "$PAUSE"
    o1=$(OPENBLAS_NUM_THREADS=2 ours "r$r-1rank" "$TITAN" train --config bench_moe --training.steps 13)
    e1=$(torch_tps "$OUT/r$r-torch-eager.log" "$PYTHON" single); sleep "$PAUSE"
    q8=$(ratio "$o8" "$f8") q1=$(ratio "$o1" "$e1") sc=$(ratio "$o8" "$o1")
    r8s+="$q8 " r1s+="$q1 " scs+="$sc "
    printf '%-6s %9s %11s %5sx %9s %11s %5sx %12s\n' "$r" "$o8" "$f8" "$q8" "$o1" "$e1" "$q1" "$sc"
    lines+=("{\"round\": $r, \"ours_8_ranks\": $o8, \"torch_fsdp2_8\": $f8, \"ours_1_rank\": $o1, \"torch_eager\": $e1}")
done
printf '%-6s %9s %11s %5sx %9s %11s %5sx %12s\n' median "" "" "$(median <<<"$r8s")" "" "" "$(median <<<"$r1s")" \
    "$(median <<<"$scs")"
echo "(runs in $OUT)"
printf '%s\n' "${lines[@]}"
