#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying `hydra/launcher=slurm` and for the tests:
# Debian's munge, slurmctld and slurmd (installed with apt if missing), run as root without
# systemd, with a minimal /etc/slurm/slurm.conf (one node: this machine, one partition: debug).
#   scripts/slurm.sh up      # also: make slurm-up
#   scripts/slurm.sh down    # also: make slurm-down
# On a real cluster none of this is needed: see the README's "Sweeps on a SLURM cluster".
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# The one-node cluster of scripts/slurm.sh; make slurm-down stops it."
LOGS=/var/log/slurm

fail() { echo "error: $*" >&2; exit 1; }

ensure_packages() {
  command -v munged >/dev/null && command -v slurmctld >/dev/null &&
    command -v slurmd >/dev/null && command -v sbatch >/dev/null && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq munge slurmctld slurmd slurm-client >/dev/null
}

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and is not this project's; that machine has its own SLURM, use it"
  fi
  local node
  node=$(slurmd -C | head -1)   # NodeName=<hostname -s> CPUs=... RealMemory=...
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS"
  cat >"$CONF" <<EOF
$MARK
ClusterName=onenode
SlurmctldHost=$(hostname -s)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

up() {
  [ "$(id -u)" = 0 ] || fail "the one-node cluster runs as root (sudo make slurm-up)"
  ensure_packages
  write_conf
  if ! pgrep -x munged >/dev/null; then
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged
    touch /run/munge/started-by-slurm-up   # so that slurm-down stops only a munged of ours
  fi
  pgrep -x slurmctld >/dev/null || { setsid slurmctld -D >>"$LOGS/slurmctld.out" 2>&1 </dev/null & }
  pgrep -x slurmd >/dev/null || { setsid slurmd -D >>"$LOGS/slurmd.out" 2>&1 </dev/null & }
  for _ in $(seq 120); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "SLURM is up: one node ($(hostname -s)), partition debug. Try: sinfo; squeue"
      return
    fi
    sleep 0.5
  done
  fail "SLURM did not come up; see $LOGS/slurmctld.log and $LOGS/slurmd.log"
}

down() {
  [ "$(id -u)" = 0 ] || fail "the one-node cluster runs as root (sudo make slurm-down)"
  grep -qF "$MARK" "$CONF" 2>/dev/null ||
    fail "$CONF is not this project's: its SLURM is not ours to stop"
  local ours=(slurmd slurmctld) daemon
  [ -f /run/munge/started-by-slurm-up ] && ours+=(munged)
  for daemon in "${ours[@]}"; do pkill -x "$daemon" || true; done
  local running
  for _ in $(seq 60); do   # gone before it returns, so that slurm-up can follow at once
    running=""
    for daemon in "${ours[@]}"; do ! pgrep -x "$daemon" >/dev/null || running+=" $daemon"; done
    [ -z "$running" ] && break
    sleep 0.5
  done
  [ -z "$running" ] ||
    fail "still running after 30 s:$running; stop them (pkill -KILL -x NAME) and run again"
  rm -f /run/munge/started-by-slurm-up
  echo "SLURM stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) fail "usage: $0 up|down" ;;
esac
