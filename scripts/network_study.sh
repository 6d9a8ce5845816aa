#!/usr/bin/env bash
# The simulated-network study (docs/simulated-network.md): bench_moe on two simulated hosts of 4 ranks
# (topologies/two-host-{1,10,100}gbit.toml: the inter-host link at that many Gbit/s per direction, 20 us one-way;
# within a host as fast as the sockets), global batch 16 x 256 tokens, under six parallelism plans:
#   fsdp8            FSDP over all 8 ranks, no expert parallelism
#   hsdp2x4          HSDP: shard within a host (4), replicate across the 2 hosts
#   fsdp8-ep4-host   FSDP over 8, expert parallel 4 in groups within a host (--parallelism.expert_parallel_placement consecutive)
#   fsdp8-ep4-across FSDP over 8, expert parallel 4 spread over both hosts (--parallelism.expert_parallel_placement strided)
#   hsdp2x4-ep4      HSDP 2 x 4 with expert parallel 4: only the replicas' all-reduce crosses hosts
#   fsdp8-ep8        FSDP over 8, expert parallel 8 (each rank 2 whole experts: no expert sharding; all-to-all across)
# Collectives run as the job's default picks them (--comm.algorithm auto: hierarchical for groups spanning both
# hosts); ALGORITHM=ring runs them all flat. Each plan runs REPEATS times (default 2) and the faster run counts: 8 ranks
# share the machine's cores, and a run now and then loses whole seconds to the machine. Prints a table and one JSON line per plan:
#   {"gbit", "plan", "tokens_per_sec", "runs_tokens_per_sec", "comm_wait_frac", "sent_mb", "ag_mb", "rs_mb", "ar_mb",
#    "a2a_mb", "inter_host_mb"}
# (MiB per rank and step, the mean over ranks, as metrics.jsonl's comm_sent_mb*, comm_inter_host_mb).
#
#   scripts/network_study.sh                     # 3 warm-up + 10 timed steps per run, 1, 10 and 100 Gbit/s
#   GBITS="1" STEPS=5 REPEATS=1 scripts/network_study.sh   # fewer
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
GBITS=${GBITS:-"1 10 100"}
REPEATS=${REPEATS:-2}
OUT=${OUT:-$(mktemp -d /tmp/titan-netstudy.XXXXXX)}
mkdir -p "$OUT"
TITAN=${TITAN:-.build/release/titan}
command -v jq >/dev/null || { echo "network_study.sh: needs jq: sudo apt-get install -y jq" >&2; exit 1; }
[ -x "$TITAN" ] || { echo "network_study.sh: build first: swift build -c release --product titan" >&2; exit 1; }
total=$((WARMUP + STEPS))

plans=(
    "fsdp8|--parallelism.data_parallel_shard_degree 8 --parallelism.expert_parallel_degree 1"
    "hsdp2x4|--parallelism.data_parallel_replicate_degree 2 --parallelism.data_parallel_shard_degree 4 --parallelism.expert_parallel_degree 1"
    "fsdp8-ep4-host|--parallelism.data_parallel_shard_degree 8 --parallelism.expert_parallel_degree 4 --parallelism.expert_parallel_placement consecutive"
    "fsdp8-ep4-across|--parallelism.data_parallel_shard_degree 8 --parallelism.expert_parallel_degree 4 --parallelism.expert_parallel_placement strided"
    "hsdp2x4-ep4|--parallelism.data_parallel_replicate_degree 2 --parallelism.data_parallel_shard_degree 4 --parallelism.expert_parallel_degree 4"
    "fsdp8-ep8|--parallelism.data_parallel_shard_degree 8 --parallelism.expert_parallel_degree 8"
)
rows=()
for gbit in $GBITS; do
    for p in "${plans[@]}"; do
        IFS='|' read -r name flags <<<"$p"
        runs=()
        for r in $(seq "$REPEATS"); do
            dump="$OUT/$gbit-$name-$r"
            # shellcheck disable=SC2086  # $flags is a list of flags
            "$TITAN" launch --topology "topologies/two-host-${gbit}gbit.toml" -- train --config bench_moe \
                --training.steps "$total" --training.local_batch_size 2 $flags --comm.algorithm "${ALGORITHM:-auto}" \
                --job.dump_folder "$dump" >"$dump.log" 2>&1 ||
                { cat "$dump.log" >&2; exit 1; }
            runs+=("$(jq -s -c --arg plan "$name" --argjson gbit "$gbit" --argjson warm "$WARMUP" '
                [ .[] | select(.step > $warm) ] as $s
                | ($s | map(.step_time_s) | add) as $t
                | def mean(k): (($s | map(.[k] // 0) | add) / ($s | length) * 10 | round) / 10;
                {gbit: $gbit, plan: $plan,
                 tokens_per_sec: ((($s | map(.tokens_per_sec * .step_time_s) | add) / $t * 10 | round) / 10),
                 comm_wait_frac: ((($s | map(.comm_wait_s) | add) / $t * 1000 | round) / 1000),
                 sent_mb: mean("comm_sent_mb"), ag_mb: mean("comm_sent_mb_all_gather"), rs_mb: mean("comm_sent_mb_reduce_scatter"),
                 ar_mb: mean("comm_sent_mb_all_reduce"), a2a_mb: mean("comm_sent_mb_all_to_all"),
                 inter_host_mb: mean("comm_inter_host_mb")}' "$dump/metrics.jsonl")")
        done
        rows+=("$(printf '%s\n' "${runs[@]}" | jq -s -c 'max_by(.tokens_per_sec) + {runs_tokens_per_sec: map(.tokens_per_sec)}')")
    done
done

echo "bench_moe on 2 simulated hosts x 4 ranks, global batch 16 x 256 tokens, $STEPS timed steps after $WARMUP warm-up,"
echo "the faster of $REPEATS run(s) per plan;"
echo "MiB: sent per rank and step (mean over ranks), by collective, and the part sent to the other host"
printf '%5s  %-17s %9s %10s %8s %6s %6s %6s %6s %11s\n' Gbit plan tokens/s comm_wait sent_MiB ag rs ar a2a inter-host
for j in "${rows[@]}"; do
    jq -r '[.gbit, .plan, .tokens_per_sec, .comm_wait_frac, .sent_mb, .ag_mb, .rs_mb, .ar_mb, .a2a_mb, .inter_host_mb] | @tsv' <<<"$j" |
        awk -F'\t' '{ printf "%5s  %-17s %9.0f %9.0f%% %8.1f %6.1f %6.1f %6.1f %6.1f %11.1f\n", $1, $2, $3, $4 * 100, $5, $6, $7, $8, $9, $10 }'
done
echo "(runs in $OUT)"
printf '%s\n' "${rows[@]}"
