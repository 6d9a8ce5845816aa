#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for tests: munged, slurmctld and slurmd (Debian's packages), run as
# root from a folder of their own, with a minimal slurm.conf that declares more CPUs than the machine has, so that a
# 2-core box runs `srun -n 4`.
#   scripts/slurm/local-cluster.sh start DIR   install what is missing (as root), start the daemons, wait until the
#                                              node is idle, print "SLURM_CONF=DIR/slurm.conf"
#   scripts/slurm/local-cluster.sh stop DIR    stop the daemons started in DIR (by their pid files)
# Exit status 3: the tools cannot be installed or the cluster cannot be started (the caller may skip its tests).
set -uo pipefail

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd) || exit 3

stop() {
    local pids=()
    for daemon in slurmd slurmctld munged; do
        [ -f "$dir/$daemon.pid" ] && pids+=("$(cat "$dir/$daemon.pid")")
        rm -f "$dir/$daemon.pid"
    done
    [ ${#pids[@]} -eq 0 ] && return 0
    kill "${pids[@]}" 2>/dev/null
    for _ in $(seq 30); do kill -0 "${pids[@]}" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "${pids[@]}" 2>/dev/null   # a throwaway cluster: its state need not be saved
    return 0
}

fail() {
    echo "local-cluster: $*" >&2
    for log in "$dir"/log/*.log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -n 15 "$log" >&2; }; done
    stop
    exit 3
}

case $action in
stop) stop; exit 0 ;;
start) ;;
*) usage ;;
esac

# Debian's packages: munge, slurmctld, slurmd, slurm-client (srun, sbatch, sinfo).
if ! command -v munged >/dev/null || ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v srun >/dev/null; then
    [ "$(id -u)" -eq 0 ] || fail "Slurm is not installed; run: sudo apt-get install -y munge slurmctld slurmd slurm-client"
    echo "local-cluster: installing munge slurmctld slurmd slurm-client" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq munge slurmctld slurmd slurm-client; } >&2 \
        || fail "apt-get install munge slurmctld slurmd slurm-client failed"
fi
[ "$(id -u)" -eq 0 ] || fail "slurmd runs as root (it starts the tasks of every user); run this as root"

stop   # a cluster left over in DIR
mkdir -p "$dir/state" "$dir/spool" "$dir/log" || fail "cannot create $dir"
host=$(hostname -s)
# Ports nothing listens on, so that two test runs on one machine do not meet.
read -r ctld_port slurmd_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])' 2>/dev/null || echo "$((20000 + RANDOM % 20000)) $((40000 + RANDOM % 20000))")
cpus=$(( $(nproc) > 4 ? $(nproc) : 4 ))

# Starts a daemon with none of this script's descriptors but its own 0-2: a daemon keeps what it inherits, and the
# caller may watch one to learn that this script ended (Foundation's Process does), or read a pipe to its end.
daemon() {
    (
        for fd in /proc/$BASHPID/fd/*; do
            n=${fd##*/}
            [ "$n" -gt 2 ] && eval "exec $n>&-"
        done
        exec "$@"
    ) </dev/null >>"$dir/log/start.log" 2>&1
}

# munge: a key of our own (readable by root only) and its socket in DIR.
[ -f "$dir/munge.key" ] || { dd if=/dev/urandom of="$dir/munge.key" bs=1 count=1024 status=none && chmod 600 "$dir/munge.key"; } \
    || fail "cannot write the munge key"
daemon munged --force --socket="$dir/munge.sock" --key-file="$dir/munge.key" --log-file="$dir/log/munged.log" \
    --pid-file="$dir/munged.pid" --seed-file="$dir/munged.seed" || fail "munged did not start"

cat > "$dir/slurm.conf" <<CONF
# One node, this machine, declaring $cpus CPUs (config_overrides: slurmd believes it) so that srun -n 4 fits on 2 cores.
ClusterName=titantest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
FirstJobId=$((1000 + RANDOM % 50000))
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
CONF
export SLURM_CONF="$dir/slurm.conf"

daemon slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start"
daemon slurmd -f "$SLURM_CONF" || fail "slurmd did not start"
for _ in $(seq 150); do
    [ "$(sinfo -h -o %T 2>/dev/null)" = idle ] && { echo "SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.2
done
fail "the node did not become idle within 30 s ($(sinfo -h -o '%T %E' 2>&1))"
