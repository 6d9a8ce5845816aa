#!/usr/bin/env bash
# The collective bandwidth table beside its ceiling, in one command:
#   scripts/bench_collectives.sh                          8 local ranks
#   scripts/bench_collectives.sh 4 --sizes 1048576        any rank count, any `titan bench` option
#   scripts/bench_collectives.sh topologies/two-host-ipc.toml   a topology (several hosts: a row per algorithm)
# 1. The plain C ring (scripts/zmq_ring_ceiling.c: the job's rank count of processes passing 2 MiB messages around a
#    libzmq ring over ipc, zero-copy sends, 50 rounds), built with `cc -O2 ... -lzmq`, run 3 times; the median is the
#    ceiling the issue measures against; then the same with `consume` (each received message copied into its place
#    in an output buffer, as a collective must deliver what it receives), the ceiling of a collective that keeps its data.
# 2. `titan bench` on the same ranks (through run_cluster.sh, which builds when sources changed): its own transport
#    ring ceiling (the same pass through SwiftTitan's channel), then every collective, with `of_ring` against it.
# Last line: {"c_ring_ceiling_gbps": median, "runs": [...], "c_ring_consume_ceiling_gbps": median, "consume_runs": [...],
# "ranks": N}, after the bench's JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-8}
[ $# -gt 0 ] && shift
if [[ $target =~ ^[0-9]+$ ]]; then ranks=$target
elif [ -f "$target" ]; then ranks=$(awk -F= '/^[[:space:]]*ranks[[:space:]]*=/ { s += $2 } END { print s }' "$target")
else echo "bench_collectives.sh: '$target' is neither a rank count nor a topology file" >&2; exit 2
fi

scripts/bootstrap.sh   # libzmq and its headers
bin=$(mktemp -d /tmp/titan-ceiling.XXXXXX)
trap 'rm -rf "$bin"' EXIT
cc -O2 -o "$bin/zmq_ring_ceiling" scripts/zmq_ring_ceiling.c -lzmq
ceiling() {  # median of 3 runs of the C ring; extra argument: consume
    local line runs=()
    for _ in 1 2 3; do
        line=$("$bin/zmq_ring_ceiling" "$ranks" 2097152 50 ipc "$@")
        echo "$line" >&2
        runs+=("$(sed -E 's/.*per-link ([0-9.]+) GB\/s.*/\1/' <<<"$line")")
    done
    echo "$(printf '%s\n' "${runs[@]}" | sort -g | sed -n 2p) $(IFS=,; echo "${runs[*]}")"
}
read -r median runs < <(ceiling)
echo "C ring ceiling (median of 3): $median GB/s per link"
read -r consumed consumed_runs < <(ceiling consume)
echo "C ring ceiling, received data copied into place (median of 3): $consumed GB/s per link"

./run_cluster.sh "$target" bench "$@"
printf '{"c_ring_ceiling_gbps": %s, "runs": [%s], "c_ring_consume_ceiling_gbps": %s, "consume_runs": [%s], "ranks": %d}\n' \
    "$median" "$runs" "$consumed" "$consumed_runs" "$ranks"
