#!/usr/bin/env bash
# Training throughput benchmark: bench_moe on 1 rank and on 2, 4 and 8 ranks (shard N × ep N: each expert on one rank,
# the best split here), each in fp32 and in mixed precision ("bf16": --training.mixed_precision_param bfloat16), plus
# at 8 ranks: bf16 with bf16 gradient reductions, ep 4, resharding off, no idle-CPU lending (--no-lend-idle-cpus) and
# ranks left unbound by the launcher (--cpu-bind none; the other rows use its default, block, which lends idle CPUs
# when ranks outnumber them); same global batch of 16 sequences × 256 tokens (RANKS="8" limits the multi-rank rows).
# Prints a table and one JSON line per row:
#   {"name", "ranks", "precision", "tokens_per_sec", "mfu", "comm_wait_frac", "comm_mb", "max_rss_mb"}
#
#   scripts/bench.sh                 # 3 warm-up + 10 timed steps per row
#   STEPS=20 WARMUP=3 scripts/bench.sh
#   BUILD_PATH=.build-perf scripts/bench.sh   # use another SwiftPM scratch path
#
# tokens_per_sec: global tokens of the timed steps / their summed step time (rank 0's metrics.jsonl).
# mfu: tokens_per_sec × model FLOPs per token / the GEMM peak of the row's precision (sgemm, or the bf16 GEMM for bf16
#      rows), measured by `titan bench-gemm [--bf16]` in this run with the machine's cores (OPENBLAS_NUM_THREADS=2 here). Model FLOPs per token (torchtitan's formula):
#      6 × active params per token + 12 × n_layers × n_heads × head_dim × seq_len (see Sources/titan/BenchGemmCommand.swift).
# comm_wait_frac: share of the step rank 0's training thread spends blocked in Work.wait() (every blocking collective).
# comm_mb: payload MiB each rank sent per timed step (metrics.jsonl's comm_sent_mb: the mean over ranks; 0 on 1 rank).
# max_rss_mb: peak RSS of rank 0's process.
# Single rank runs with OPENBLAS_NUM_THREADS=2; each of the 8 ranks with 1 (the launcher sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
BUILD_PATH=${BUILD_PATH:-.build}
OUT=${OUT:-$(mktemp -d /tmp/titan-bench.XXXXXX)}
mkdir -p "$OUT"
CORES=$(nproc)
if ! command -v jq >/dev/null; then  # the tables are computed from metrics.jsonl with jq
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq jq >&2
    else echo "bench.sh: needs jq: sudo apt-get install -y jq" >&2; exit 1; fi
fi

scripts/bootstrap.sh   # the system libraries the build links (libzmq, OpenBLAS, BLIS)
if ! log=$(swift build -c release --scratch-path "$BUILD_PATH" --product titan 2>&1); then
    echo "$log" >&2; echo "bench.sh: build failed" >&2; exit 1
fi
TITAN="$BUILD_PATH/release/titan"
total=$((WARMUP + STEPS))

gemm_json=$(OPENBLAS_NUM_THREADS=$CORES "$TITAN" bench-gemm --size 2048 --reps 10 --flavor bench_moe --seq-len 256 | tail -1)
peak=$(jq -r .peak_gflops <<<"$gemm_json")
fpt=$(jq -r .flops_per_token <<<"$gemm_json")
# The bf16 rows' MFU is against the bf16 GEMM peak (bfloat16 inputs, fp32 accumulation), measured the same way.
peak16=$(OPENBLAS_NUM_THREADS=$CORES "$TITAN" bench-gemm --bf16 --size 2048 --reps 10 --flavor bench_moe --seq-len 256 | tail -1 | jq -r .peak_gflops)
BF16=(--training.mixed_precision_param bfloat16)

for p in fp32 bf16; do
    flags=(); [ "$p" = bf16 ] && flags=("${BF16[@]}")
    OPENBLAS_NUM_THREADS=$CORES "$TITAN" train --config bench_moe --training.steps "$total" "${flags[@]}" \
        --job.dump_folder "$OUT/single-$p" >"$OUT/single-$p.log" 2>&1 || { cat "$OUT/single-$p.log" >&2; exit 1; }
done
RANKS=${RANKS:-"2 4 8"}
# Multi-rank rows: "ranks|ep|launcher flags|train flags|label", local batch 16 / n: the same global batch. At 8 ranks,
# ep 4 shards each expert over two ranks (expert FSDP: twice the bytes per step); "reshard never" keeps the gathered
# parameters between forward and backward (ZeRO-2 style: no second all-gather per block); the plain rows use
# torchtitan's default resharding.
runs=()
for n in $RANKS; do
    runs+=("$n|$n|||")
    runs+=("$n|$n||${BF16[*]}|, bf16")
    if [ "$n" -eq 8 ]; then
        runs+=("8|4|||")
        runs+=("8|8||${BF16[*]} --training.mixed_precision_reduce bfloat16|, bf16, bf16 reduce")
        runs+=("8|8||--parallelism.fsdp_reshard_after_forward never|, reshard never")
        runs+=("8|8|--no-lend-idle-cpus||, no lending")
        runs+=("8|8|--cpu-bind none||, unbound")
    fi
done
for i in "${!runs[@]}"; do
    IFS='|' read -r n ep launch_flags extra _ <<<"${runs[$i]}"
    # shellcheck disable=SC2086  # $launch_flags and $extra are lists of flags
    "$TITAN" launch --ranks "$n" $launch_flags -- train --config bench_moe --training.steps "$total" --training.local_batch_size $(( 16 / n )) \
        --parallelism.data_parallel_shard_degree "$n" --parallelism.expert_parallel_degree "$ep" $extra \
        --job.dump_folder "$OUT/run$i" >"$OUT/run$i.log" 2>&1 || { cat "$OUT/run$i.log" >&2; exit 1; }
done

row() {  # name ranks metrics.jsonl precision
    local p=${4:-fp32} pk=$peak
    [ "$p" = bf16 ] && pk=$peak16
    jq -s -c --arg name "$1" --argjson ranks "$2" --argjson warm "$WARMUP" --argjson peak "$pk" --argjson fpt "$fpt" --arg p "$p" '
        [ .[] | select(.step > $warm) ] as $s
        | ($s | map(.step_time_s) | add) as $t
        | ($s | map(.tokens_per_sec * .step_time_s) | add) as $tok
        | ($tok / $t) as $tps
        | {name: $name, ranks: $ranks, precision: $p,
           tokens_per_sec: (($tps * 10 | round) / 10),
           mfu: (($tps * $fpt / ($peak * 1e9) * 10000 | round) / 10000),
           comm_wait_frac: ((($s | map(.comm_wait_s) | add) / $t * 10000 | round) / 10000),
           comm_mb: ((($s | map(.comm_sent_mb // 0) | add) / ($s | length) * 10 | round) / 10),
           max_rss_mb: ($s | map(.max_rss_mb) | max)}' "$3"
}
rows=("$(row "bench_moe 1 rank" 1 "$OUT/single-fp32/metrics.jsonl")" "$(row "bench_moe 1 rank, bf16" 1 "$OUT/single-bf16/metrics.jsonl" bf16)")
for i in "${!runs[@]}"; do
    IFS='|' read -r n ep _ extra label <<<"${runs[$i]}"
    p=fp32; [[ "$extra" == *mixed_precision_param* ]] && p=bf16
    rows+=("$(row "bench_moe $n ranks (shard $n x ep $ep$label)" "$n" "$OUT/run$i/metrics.jsonl" "$p")")
done

echo "bench_moe, global batch 16 x 256 tokens, $STEPS timed steps after $WARMUP warm-up; $(printf '%.4g' "$fpt") FLOPs/token;"
echo "peaks ($CORES threads): sgemm $peak GFLOP/s (fp32 rows' MFU), bf16 GEMM $peak16 GFLOP/s (bf16 rows'); vs_1rank: against the 1-rank row of the same precision"
printf '%-56s %6s %14s %7s %15s %8s %11s %9s\n' name ranks tokens/s MFU comm_wait_frac comm_mb max_rss_mb vs_1rank
s1=$(jq .tokens_per_sec <<<"${rows[0]}") s1b=$(jq .tokens_per_sec <<<"${rows[1]}")
for j in "${rows[@]}"; do
    jq -r '[.name, .ranks, .tokens_per_sec, .mfu, .comm_wait_frac, .comm_mb, .max_rss_mb, .precision] | @tsv' <<<"$j" |
        awk -F'\t' -v s1="$s1" -v s1b="$s1b" '{ base = $8 == "bf16" ? s1b : s1
            printf "%-56s %6d %14.0f %6.1f%% %15.3f %8.1f %11.0f %9.2f\n", $1, $2, $3, $4 * 100, $5, $6, $7, $3 / base }'
done
echo "(runs in $OUT)"
printf '%s\n' "${rows[@]}"
