#!/usr/bin/env bash
# Start a private single-node SLURM cluster on this machine (for tests and CI).
#
#   eval "$(bash slurm/local/up.sh [STATE_DIR])"     # exports SLURM_CONF
#   ...  sbatch / srun / python -m poc59.train -m hydra/launcher=slurm ...
#   bash slurm/local/down.sh [STATE_DIR]
#
# STATE_DIR (default $POC59_SLURM_DIR, else ${TMPDIR:-/tmp}/poc59-slurm) holds everything:
# slurm.conf, state, spool, logs, and the pid of every daemon this script started
# (<name>.pid; down.sh stops exactly those). Installs SLURM and munge from Debian packages
# when absent (root only). Idempotent: a cluster of this STATE_DIR that is already up and
# healthy is left alone. Only the `export SLURM_CONF=...` line goes to stdout (also written
# to STATE_DIR/env); progress and errors go to stderr.
#
# Environment knobs: POC59_SLURM_PARTITION (debug), POC59_SLURM_PORT (first free of 6817,
# 6819, ...; slurmd uses the next port), POC59_SLURM_MEM_MARGIN_MB (1024: kept out of
# RealMemory), POC59_SLURM_TIMEOUT (60 s for each wait).
set -euo pipefail

SECONDS=0
STATE_DIR=${1:-${POC59_SLURM_DIR:-${TMPDIR:-/tmp}/poc59-slurm}}
PARTITION=${POC59_SLURM_PARTITION:-debug}
MEM_MARGIN_MB=${POC59_SLURM_MEM_MARGIN_MB:-1024}
TIMEOUT=${POC59_SLURM_TIMEOUT:-60}

say() { echo "up.sh: $*" >&2; }
die() { echo "up.sh: error: $*" >&2; exit 1; }

mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd -P)
CONF=$STATE_DIR/slurm.conf
LOGS=$STATE_DIR/log
export SLURM_CONF=$CONF

# A pid is alive when its process exists and is not a zombie (exited processes linger as
# zombies here for seconds), and it is the program we expect (pids get reused).
alive() {  # alive PID NAME
    local pid=$1 name=$2 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $stat && $stat != Z && $stat != X ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}
recorded_alive() {  # recorded_alive NAME: the daemon recorded in STATE_DIR/NAME.pid is running
    [[ -f $STATE_DIR/$1.pid ]] && alive "$(cat "$STATE_DIR/$1.pid")" "$1"
}
tail_logs() {
    local f
    for f in "$@"; do
        [[ -f $f ]] || continue
        echo "---- last lines of $f" >&2
        tail -n 20 "$f" >&2
    done
}
export_line() { echo "export SLURM_CONF=$CONF"; }

node_name=$(hostname -s)
node_state() { scontrol show node "$node_name" 2>/dev/null | grep -o 'State=[A-Z_+]*' | head -1 | cut -d= -f2; }
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
healthy() {  # this STATE_DIR's daemons run, the controller answers and the node takes jobs
    recorded_alive slurmctld && recorded_alive slurmd && ctld_up || return 1
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || return 1
    local state
    state=$(node_state)
    [[ $state =~ ^(IDLE|MIXED|ALLOCATED|COMPLETING) ]] && ! [[ $state =~ (DOWN|DRAIN|NOT_RESPONDING|FAIL) ]]
}

# ---- already up?
if [[ -f $CONF ]] && command -v scontrol >/dev/null && healthy; then
    say "the cluster of $STATE_DIR is already up (node $node_name $(node_state)); nothing to do"
    export_line
    exit 0
fi

# ---- install SLURM and munge when absent
missing=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "SLURM/munge are not installed (${missing[*]}) and only root can install them: run as root, or: apt-get install -y slurmctld slurmd slurm-client munge"
    command -v apt-get >/dev/null || die "SLURM/munge are not installed (${missing[*]}) and there is no apt-get to install them with"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(slurmctld slurmd slurm-client munge)
    if ! apt-cache show "${pkgs[@]}" >/dev/null 2>&1; then
        say "apt-get update (package lists lack SLURM)"
        apt-get update -qq >&2 || die "apt-get update failed"
    fi
    say "installing ${pkgs[*]}"
    apt-get install -y -qq "${pkgs[@]}" >&2 || die "apt-get install ${pkgs[*]} failed"
fi
[[ $EUID -eq 0 ]] || die "this test cluster runs its daemons as root (SlurmUser=root): run up.sh as root"

# ---- munge: reuse a working munged, else start one as user munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munge works (munged already running)"
else
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key >&2 || die "mungekey failed"
        chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    rm -f /run/munge/munged.pid
    say "starting munged as user munge"
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid >&2 || { tail_logs /var/log/munge/munged.log; die "munged did not start"; }
    for ((i = 0; i < TIMEOUT * 10; i++)); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || { tail_logs /var/log/munge/munged.log; die "munge -n | unmunge still fails after ${TIMEOUT}s"; }
    cp /run/munge/munged.pid "$STATE_DIR/munged.pid"  # munged forks: its own pid file names the daemon
fi

# ---- stop leftovers of an earlier, broken start of this STATE_DIR (ours only, by pid file)
for name in slurmd slurmctld; do
    if recorded_alive "$name"; then
        pid=$(cat "$STATE_DIR/$name.pid")
        say "stopping the earlier $name (pid $pid): the cluster was not healthy"
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do alive "$pid" "$name" || break; sleep 0.1; done
        alive "$pid" "$name" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE_DIR/$name.pid"
done

# ---- ports: POC59_SLURM_PORT, else the first pair not taken (another cluster may run here)
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [[ -n ${POC59_SLURM_PORT:-} ]]; then
    ctld_port=$POC59_SLURM_PORT
else
    ctld_port=6817
    while port_busy "$ctld_port" || port_busy $((ctld_port + 1)); do
        ctld_port=$((ctld_port + 2))
        ((ctld_port < 6900)) || die "no free port pair between 6817 and 6900: set POC59_SLURM_PORT"
    done
fi
slurmd_port=$((ctld_port + 1))

# ---- slurm.conf
cpus=$(nproc)
avail_mb=$(free -m | awk '/^Mem:/ {print ($7 ? $7 : $4)}')
mem_mb=$((avail_mb - MEM_MARGIN_MB))
((mem_mb >= 512)) || die "only ${avail_mb} MB of memory available (margin ${MEM_MARGIN_MB} MB): too little for a test cluster"
mkdir -p "$STATE_DIR/state" "$STATE_DIR/spool" "$LOGS" "$STATE_DIR/run"
cat >"$CONF" <<EOF
# Written by slurm/local/up.sh: a private single-node test cluster. Do not edit (rewritten on each start).
ClusterName=poc59test
SlurmctldHost=$node_name
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
FirstJobId=$(($(date +%s) % 60000000 + 1))
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
DefMemPerCPU=$((mem_mb / cpus))
NodeName=$node_name NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$node_name Default=YES MaxTime=INFINITE State=UP
EOF

# ---- start the daemons (in the foreground, detached, so that $! is the daemon's own pid)
wait_for() {  # wait_for WHAT COMMAND...: poll for TIMEOUT seconds
    local what=$1
    shift
    for ((i = 0; i < TIMEOUT * 10; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    tail_logs "$LOGS/slurmctld.log" "$LOGS/slurmd.log" "$LOGS/slurmctld.out" "$LOGS/slurmd.out"
    die "$what: not reached after ${TIMEOUT}s (logs above, all in $LOGS)"
}
adopt_pid() {  # should setsid have forked, $! is not the daemon: take the pid the daemon wrote itself
    recorded_alive "$1" || cp "$STATE_DIR/run/$1.pid" "$STATE_DIR/$1.pid" 2>/dev/null || true
    recorded_alive "$1" || { tail_logs "$LOGS/$1.log" "$LOGS/$1.out"; die "$1 exited right after its start (logs above)"; }
}
rm -f "$STATE_DIR/run/slurmctld.pid" "$STATE_DIR/run/slurmd.pid"
started=$(date +%s)
say "starting slurmctld (port $ctld_port; $cpus CPUs, $mem_mb MB on node $node_name, partition $PARTITION)"
# -c: forget jobs of an earlier run of this STATE_DIR (job ids still do not repeat: FirstJobId follows the clock); -i: ignore state files that do not load
setsid slurmctld -D -c -i -f "$CONF" </dev/null >"$LOGS/slurmctld.out" 2>&1 &
echo $! >"$STATE_DIR/slurmctld.pid"
wait_for "slurmctld answering 'scontrol ping' with UP" ctld_up
adopt_pid slurmctld
say "starting slurmd"
setsid slurmd -D -f "$CONF" </dev/null >"$LOGS/slurmd.out" 2>&1 &
echo $! >"$STATE_DIR/slurmd.pid"
wait_for "slurmd writing its pid file" test -s "$STATE_DIR/run/slurmd.pid"
adopt_pid slurmd

node_fresh() {  # registered by the slurmd started above (slurmctld restores the old node state) and idle
    recorded_alive slurmd || return 1
    local info start
    info=$(scontrol show node "$node_name" 2>/dev/null) || return 1
    start=$(grep -o 'SlurmdStartTime=[^ ]*' <<<"$info" | cut -d= -f2)
    [[ -n $start && $start != None ]] || return 1
    (($(date -d "$start" +%s 2>/dev/null || echo 0) >= started - 1)) || return 1
    local state
    state=$(grep -o 'State=[A-Z_+]*' <<<"$info" | head -1)
    if [[ $state =~ (DRAIN|DOWN) ]]; then  # a drain of an earlier run of this STATE_DIR survives restarts
        scontrol update NodeName="$node_name" State=RESUME >/dev/null 2>&1 || true
        return 1
    fi
    [[ $state == State=IDLE ]]
}
wait_for "node $node_name idle with a SlurmdStartTime after this start" node_fresh
recorded_alive slurmctld || { tail_logs "$LOGS/slurmctld.log"; die "slurmctld exited"; }

export_line >"$STATE_DIR/env"
say "cluster up in ${SECONDS} s: partition $PARTITION, node $node_name; stop it with: bash $(dirname "$0")/down.sh $STATE_DIR"
export_line
