#!/usr/bin/env bash
# SwiftTitan entry point.
#   ./run_cluster.sh 8                              train on 8 local ranks (default topology for 8)
#   ./run_cluster.sh topologies/NAME.toml [--section.field value ...]
#   ./run_cluster.sh 8 collectives                  collective correctness suite
#   ./run_cluster.sh 8 bench                        collective bandwidth table
#   ./run_cluster.sh 1 generate --generate.prompt_ids 1,2,3 ...   generate from a model (one process; see README)
#   ./run_cluster.sh 8 --max-restarts 2 ...         restart the job from its latest checkpoint when a rank fails
#   ./run_cluster.sh 8 --single-process ...         every rank as a thread of one process (inproc)
#   ./run_cluster.sh topologies/two-host-tcp.toml --node 1 ...   start one host's ranks
# Every other argument goes to `titan launch` as it is (launcher options and the program's arguments may be mixed;
# `titan launch --help` lists the launcher's). Builds in release mode when sources changed; exits 0 only when every
# rank finished cleanly.
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage

scripts/bootstrap.sh

target=$1; shift
if [[ $target =~ ^[0-9]+$ ]]; then
    topology=(--ranks "$target")
elif [ -f "$target" ]; then
    topology=(--topology "$target")
else
    echo "run_cluster.sh: '$target' is neither a rank count nor a topology file" >&2
    usage
fi

# Incremental: a no-op build takes a second or two.
if ! build_log=$(swift build -c release --product titan 2>&1); then
    echo "$build_log" >&2
    echo "run_cluster.sh: build failed" >&2
    exit 1
fi

exec .build/release/titan launch "${topology[@]}" "$@"
