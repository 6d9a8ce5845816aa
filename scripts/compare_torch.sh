#!/usr/bin/env bash
# Same-sitting comparison with PyTorch on bench_moe, ROUNDS interleaved rounds, in fp32 and in mixed precision
# (bf16: ours --training.mixed_precision_param bfloat16; torch autocast(bfloat16) single, FSDP2 MixedPrecisionPolicy):
#   titan, 8 ranks (shard 8 x ep 8)   vs  torch FSDP2 over gloo, 8 processes of the same precision
#   titan, 1 rank                     vs  the best torch single process: eager, eager autocast bf16, torch.compile
#                                         and torch.compile + autocast (anchors/torch_train_tps.py single [--bf16] [--compile])
# Each of our runs goes just before the torch runs it is compared with, and every torch job is followed by a pause
# (a run started right after torch's 8-process job measured 5-10% slower). Prints one line per round and precision,
# the median ratios, and one JSON line per round. The 8-rank ratio is against torch FSDP2 of the same precision and
# (vs_best) against the faster of its precisions run so far in the round.
#
#   PYTHON=/tmp/ref/bin/python scripts/compare_torch.sh
#   ROUNDS=5 PAUSE=10 PRECISIONS="bf16" COMPILE=0 ANCHORS=../shared/anchors PYTHON=... PYTHON_FSDP=... scripts/compare_torch.sh
#
# PRECISIONS: which of ours to compare (default "fp32 bf16"); COMPILE=0 skips the torch.compile anchors (they take
# minutes to compile). PYTHON (torch + transformers) runs the single-process anchors, PYTHON_FSDP (a command, default
# $PYTHON) the FSDP ones. The FSDP anchor needs transformers >= 5: 4.x's per-expert loop skips experts that got no
# tokens, so FSDP2's reduce-scatter sizes differ between ranks and gloo aborts. Eager ran faster with 4.57 than with
# 5.24 on an EPYC (4,505-4,644 against 4,379-4,412 tokens/s back to back), so compare with the faster one, e.g.
#   PYTHON=/tmp/ref/bin/python PYTHON_FSDP="env PYTHONPATH=/tmp/tf5 /tmp/ref/bin/python" scripts/compare_torch.sh
# Ours: the same 16 x 256-token global batch, tokens/s over steps 4-13 from rank 0's metrics.jsonl; torch: over its
# steps 3-10 (4-10 with compile).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
PAUSE=${PAUSE:-10}
PRECISIONS=${PRECISIONS:-"fp32 bf16"}
COMPILE=${COMPILE:-1}
PYTHON=${PYTHON:-python3}
PYTHON_FSDP=${PYTHON_FSDP:-$PYTHON}
ANCHORS=${ANCHORS:-../shared/anchors}
BUILD_PATH=${BUILD_PATH:-.build}
OUT=${OUT:-$(mktemp -d /tmp/titan-compare.XXXXXX)}
mkdir -p "$OUT"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "compare_torch.sh: ROUNDS must be a positive integer, got '$ROUNDS'" >&2; exit 1; }
for p in $PRECISIONS; do
    [[ "$p" == fp32 || "$p" == bf16 ]] || { echo "compare_torch.sh: PRECISIONS takes fp32 and bf16, got '$p'" >&2; exit 1; }
done
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
torch_tps() {  # log python-command mode [args]: runs the anchor, prints its tokens/s
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
max() { tr ' ' '\n' | sort -g | tail -1; }
printf '%-6s %-5s %9s %11s %6s %8s %9s %18s %6s %12s\n' round prec ours_8 torch_fsdp2 ratio vs_best ours_1 "torch_1 (best)" ratio ours_8/ours_1
declare -A r8s r8b r1s scs
lines=()
for r in $(seq "$ROUNDS"); do
    # The single-process anchors once per round: the best of them is what ours is compared with in both precisions.
    declare -A single=() fsdp=()
    line="{\"round\": $r"
    for p in $PRECISIONS; do
        flags=(); torchflag=()
        if [ "$p" = bf16 ]; then flags=(--training.mixed_precision_param bfloat16); torchflag=(--bf16); fi
        o8=$(ours "r$r-$p-8ranks" "$TITAN" launch --ranks 8 -- train --config bench_moe --training.steps 13 \
            --training.local_batch_size 2 --parallelism.data_parallel_shard_degree 8 --parallelism.expert_parallel_degree 8 "${flags[@]}")
        f8=$(torch_tps "$OUT/r$r-torch-fsdp-$p.log" "$PYTHON_FSDP" fsdp 8 "${torchflag[@]}"); sleep "$PAUSE"
        fsdp[$p]=$f8
        o1=$(OPENBLAS_NUM_THREADS=2 ours "r$r-$p-1rank" "$TITAN" train --config bench_moe --training.steps 13 "${flags[@]}")
        if [ ${#single[@]} -eq 0 ]; then
            single[eager]=$(torch_tps "$OUT/r$r-torch-eager.log" "$PYTHON" single)
            single[eager_bf16]=$(torch_tps "$OUT/r$r-torch-eager-bf16.log" "$PYTHON" single --bf16)
            if [ "$COMPILE" = 1 ]; then
                single[compile]=$(torch_tps "$OUT/r$r-torch-compile.log" "$PYTHON" single --compile)
                single[compile_bf16]=$(torch_tps "$OUT/r$r-torch-compile-bf16.log" "$PYTHON" single --compile --bf16)
            fi
            sleep "$PAUSE"
        fi
        best=$(echo "${single[@]}" | max)
        bestname=""
        for k in "${!single[@]}"; do [ "${single[$k]}" = "$best" ] && bestname=$k; done
        # vs_best: against the faster torch FSDP2 of the precisions run so far this round (fp32 runs first).
        q8=$(ratio "$o8" "$f8") q8b=$(ratio "$o8" "$(echo "${fsdp[@]}" | max)") q1=$(ratio "$o1" "$best") sc=$(ratio "$o8" "$o1")
        r8s[$p]+="$q8 " r8b[$p]+="$q8b " r1s[$p]+="$q1 " scs[$p]+="$sc "
        printf '%-6s %-5s %9s %11s %5sx %7sx %9s %18s %5sx %12s\n' "$r" "$p" "$o8" "$f8" "$q8" "$q8b" "$o1" "$best $bestname" "$q1" "$sc"
        line+=", \"ours_8_ranks_$p\": $o8, \"torch_fsdp2_8_$p\": $f8, \"ours_1_rank_$p\": $o1"
    done
    for k in "${!single[@]}"; do line+=", \"torch_single_$k\": ${single[$k]}"; done
    lines+=("$line}")
    unset single fsdp
done
for p in $PRECISIONS; do
    printf '%-6s %-5s %9s %11s %5sx %7sx %9s %18s %5sx %12s\n' median "$p" "" "" "$(median <<<"${r8s[$p]}")" \
        "$(median <<<"${r8b[$p]}")" "" "" \
        "$(median <<<"${r1s[$p]}")" "$(median <<<"${scs[$p]}")"
done
echo "(runs in $OUT)"
printf '%s\n' "${lines[@]}"
