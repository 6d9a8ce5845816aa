#!/usr/bin/env bash
# The collective fuzzer as a script test: OPS random collectives (default 10,000) at 8 ranks with seed SEED (default
# 1) on one host, on two simulated hosts (4+4 and the uneven 3+5) and on three (3+3+2), each run checked against local
# references; exits non-zero when any op failed. Prints each run's seed, progress, time and its `N passed, M failed` line.
#   scripts/fuzz_collectives.sh                 10,000 ops on each topology
#   OPS=500 SEED=7 scripts/fuzz_collectives.sh
# A failure names the op; rerun it alone with `./run_cluster.sh TOPOLOGY collectives --fuzz-op K --seed SEED`.
set -euo pipefail
cd "$(dirname "$0")/.."
OPS=${OPS:-10000}
SEED=${SEED:-1}
status=0
for topology in topologies/local-8.toml topologies/two-host-ipc.toml topologies/uneven-hosts-ipc.toml topologies/three-host-ipc.toml; do
    echo "== $topology: $OPS ops, seed $SEED"
    start=$(date +%s)
    if ! ./run_cluster.sh "$topology" collectives --fuzz "$OPS" --seed "$SEED" 2>&1 | grep -v "bound to CPU"; then status=1; fi
    echo "== $topology: $(( $(date +%s) - start )) s"
done
exit $status
