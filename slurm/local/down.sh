#!/usr/bin/env bash
# Stop the private test cluster that slurm/local/up.sh started in STATE_DIR.
#
#   bash slurm/local/down.sh [STATE_DIR]     # default $POC59_SLURM_DIR, else ${TMPDIR:-/tmp}/poc59-slurm
#
# Cancels the cluster's jobs, then stops exactly the daemons recorded in STATE_DIR/<name>.pid
# (slurmd, slurmctld, and munged only if up.sh started it), checking each pid still names that
# program. Leaves STATE_DIR (logs, state) in place. Safe to run twice, and when nothing runs.
set -uo pipefail

STATE_DIR=${1:-${POC59_SLURM_DIR:-${TMPDIR:-/tmp}/poc59-slurm}}
say() { echo "down.sh: $*" >&2; }

if [[ ! -d $STATE_DIR ]]; then
    say "no $STATE_DIR: nothing to stop"
    exit 0
fi
STATE_DIR=$(cd "$STATE_DIR" && pwd -P)
export SLURM_CONF=$STATE_DIR/slurm.conf

alive() {  # alive PID NAME: running (not a zombie) and still that program
    local pid=$1 name=$2 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $stat && $stat != Z && $stat != X ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

# Jobs first, while slurmctld and slurmd still run: their processes end with them.
ctld_pid=$(cat "$STATE_DIR/slurmctld.pid" 2>/dev/null || true)
if alive "$ctld_pid" slurmctld && command -v squeue >/dev/null; then
    jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        say "cancelling jobs $jobs"
        scancel $jobs 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
fi

stop() {  # stop NAME
    local name=$1 file=$STATE_DIR/$1.pid pid
    [[ -f $file ]] || return 0
    pid=$(cat "$file")
    if alive "$pid" "$name"; then
        say "stopping $name (pid $pid)"
        stopped=1
        kill "$pid" 2>/dev/null
        for ((i = 0; i < 100; i++)); do alive "$pid" "$name" || break; sleep 0.1; done
        if alive "$pid" "$name"; then
            say "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
            kill -9 "$pid" 2>/dev/null
            for ((i = 0; i < 50; i++)); do alive "$pid" "$name" || break; sleep 0.1; done
        fi
    fi
    alive "$pid" "$name" && { say "error: $name (pid $pid) is still running"; return 1; }
    rm -f "$file"
}

status=0
stopped=0
stop slurmd || status=1
stop slurmctld || status=1
stop munged || status=1
rm -f "$STATE_DIR/env"
if ((status == 0)); then
    if ((stopped)); then say "stopped (state and logs stay in $STATE_DIR)"; else say "nothing of $STATE_DIR was running"; fi
fi
exit $status
