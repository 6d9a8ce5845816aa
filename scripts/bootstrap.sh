#!/usr/bin/env bash
# Makes sure the system libraries SwiftTitan builds against are present (idempotent).
# As root it installs what is missing; otherwise it prints the exact command to run.
#   scripts/bootstrap.sh               the build's packages (a missing one is an error)
#   scripts/bootstrap.sh --test-tools  also the schedulers the tests start ranks with: Open MPI's mpirun and a
#                                      one-node Slurm (munge, slurmctld, slurmd, slurm-client); when they cannot be
#                                      installed, only their tests skip
set -euo pipefail

packages=(libzmq3-dev libsodium-dev libopenblas-dev libblis-dev pkg-config)
test_tools=()
[ "${1:-}" = "--test-tools" ] && test_tools=(openmpi-bin munge slurmctld slurmd slurm-client)

missing_of() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}
mapfile -t missing < <(missing_of "${packages[@]}")
mapfile -t missing_tools < <(missing_of "${test_tools[@]}")
[ ${#missing[@]} -eq 0 ] && [ ${#missing_tools[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if [ ${#missing_tools[@]} -gt 0 ]; then
        echo "bootstrap: the scheduler tests will skip without: ${missing_tools[*]}" >&2
        echo "bootstrap: to run them: sudo apt-get install -y ${missing_tools[*]}" >&2
    fi
    [ ${#missing[@]} -eq 0 ] && exit 0
    echo "bootstrap: missing system packages: ${missing[*]}" >&2
    echo "bootstrap: run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi

apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
if [ ${#missing_tools[@]} -gt 0 ]; then
    echo "bootstrap: installing the test tools ${missing_tools[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_tools[@]}" >&2 \
        || echo "bootstrap: could not install ${missing_tools[*]}; their tests will skip" >&2
fi
