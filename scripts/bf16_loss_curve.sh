#!/usr/bin/env bash
# Mixed precision's long-run check: bench_moe trained STEPS steps (default 300) in fp32 and in bf16
# (--training.mixed_precision_param bfloat16), same seed and data; the bf16 loss curve must end within 1% of the fp32
# one (the mean loss of the last 10 steps). Prints both curves every 25 steps, the verdict, and one JSON line;
# exits 1 when the curves part. Too long for the unit tests (a few minutes here).
#
#   scripts/bf16_loss_curve.sh
#   STEPS=300 RANKS=8 EXTRA="--training.mixed_precision_reduce bfloat16" scripts/bf16_loss_curve.sh
#
# RANKS > 1 runs shard RANKS × ep RANKS with the same global batch (16 sequences); EXTRA is added to the bf16 run.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-300}
RANKS=${RANKS:-1}
EXTRA=${EXTRA:-}
BUILD_PATH=${BUILD_PATH:-.build}
OUT=${OUT:-$(mktemp -d /tmp/titan-bf16-curve.XXXXXX)}
mkdir -p "$OUT"
command -v jq >/dev/null || { echo "bf16_loss_curve.sh: needs jq (apt-get install -y jq)" >&2; exit 1; }
scripts/bootstrap.sh
if ! log=$(swift build -c release --scratch-path "$BUILD_PATH" --product titan 2>&1); then
    echo "$log" >&2; echo "bf16_loss_curve.sh: build failed" >&2; exit 1
fi
TITAN="$BUILD_PATH/release/titan"
for p in fp32 bf16; do
    flags=(--config bench_moe --training.steps "$STEPS" --training.local_batch_size $((16 / RANKS))
           --parallelism.data_parallel_shard_degree "$RANKS" --parallelism.expert_parallel_degree "$RANKS"
           --job.dump_folder "$OUT/$p")
    # shellcheck disable=SC2206  # EXTRA is a list of flags
    [ "$p" = bf16 ] && flags+=(--training.mixed_precision_param bfloat16 $EXTRA)
    "$TITAN" launch --ranks "$RANKS" --dump-folder "$OUT/$p" -- train "${flags[@]}" >"$OUT/$p.log" 2>&1 ||
        { tail -20 "$OUT/$p.log" >&2; echo "bf16_loss_curve.sh: the $p run failed (log: $OUT/$p.log)" >&2; exit 1; }
done
printf '%6s %10s %10s %9s\n' step fp32 bf16 rel_diff
jq -r -s --slurpfile b "$OUT/bf16/metrics.jsonl" '
    [range(0; length) as $i | select(((.[$i].step) % 25 == 0) or $i == 0)
     | [.[$i].step, .[$i].loss, $b[$i].loss, (($b[$i].loss - .[$i].loss) / .[$i].loss)]] | .[] | @tsv' \
    "$OUT/fp32/metrics.jsonl" | awk -F'\t' '{ printf "%6d %10.4f %10.4f %+8.2f%%\n", $1, $2, $3, $4 * 100 }'
result=$(jq -c -s --slurpfile b "$OUT/bf16/metrics.jsonl" --argjson steps "$STEPS" --argjson ranks "$RANKS" '
    (.[-10:] | map(.loss) | add / length) as $f | ($b[-10:] | map(.loss) | add / length) as $h
    | {name: "bf16_loss_curve", steps: $steps, ranks: $ranks, fp32_last10: $f, bf16_last10: $h,
       rel_diff: (($h - $f) / $f), within_1pct: ((($h - $f) / $f) | fabs < 0.01)}' "$OUT/fp32/metrics.jsonl")
jq -r '"last 10 steps: fp32 \(.fp32_last10 * 10000 | round / 10000), bf16 \(.bf16_last10 * 10000 | round / 10000): \(.rel_diff * 10000 | round / 100)% apart, " + (if .within_1pct then "within 1%" else "NOT within 1%" end)' <<<"$result"
echo "(runs in $OUT)"
echo "$result"
[ "$(jq .within_1pct <<<"$result")" = true ]
