#!/bin/sh
# A single-node SLURM cluster for the sweep tests, on a machine without systemd or usable
# cgroups: munged, slurmctld and `slurmd -N localhost`, with a slurm.conf of its own.
#
#   tests/slurm/cluster.sh start STATE_DIR   # prints `export SLURM_CONF=...` for the clients
#   tests/slurm/cluster.sh stop STATE_DIR    # stops the daemons by their pid files (munged only
#                                            # if `start` started it)
#
# Needs root and Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge). The state
# folder holds slurm.conf, the spool folders, the logs and the pid files. SLURM_CTLD_PORT and
# SLURM_D_PORT (default 6817, 6818) move the daemons' ports.
set -eu

usage() {
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
action=$1
state=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$state/slurm.conf

start() {
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
            echo "$tool is not installed: apt-get install -y slurm-wlm munge" >&2
            exit 3
        }
    done
    mkdir -p "$state/ctld" "$state/spool" "$state/log"
    # Jobs run as root here; slurmd creates the job folders below the spool folder.
    cat >"$conf" <<CONF
ClusterName=digitlab
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=${SLURM_CTLD_PORT:-6817}
SlurmdPort=${SLURM_D_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
MailProg=/bin/true
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF="$conf"

    # munged: one per machine, as the munge user; reuse a running one.
    if ! pgrep -u munge -x munged >/dev/null 2>&1; then
        mkdir -p /run/munge
        chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged
        # Stopped again by `stop` (only if this script started it).
        cp /run/munge/munged.pid "$state/munged.pid"
    fi
    /usr/sbin/slurmctld
    /usr/sbin/slurmd -N localhost

    # Ready when the node is idle (the daemons need a second or two to register).
    i=0
    until sinfo -h -N -o '%T' 2>/dev/null | grep -qx 'idle'; do
        i=$((i + 1))
        if [ "$i" -gt 60 ]; then
            echo "the cluster did not come up within 30 s; logs in $state/log" >&2
            sinfo -N >&2 || true
            exit 1
        fi
        sleep 0.5
    done
    echo "export SLURM_CONF=$conf"
}

stop() {
    for daemon in slurmd slurmctld munged; do
        pidfile=$state/$daemon.pid
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        # Wait up to 10 s for the daemon to exit, then kill it.
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 20 ]; do
            sleep 0.5
            i=$((i + 1))
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

case $action in
start) start ;;
stop) stop ;;
*) usage ;;
esac
