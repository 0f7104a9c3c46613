#!/usr/bin/env bash
# A one-node SLURM cluster on the local host, to try profiles/slurm/ without a cluster and to
# test the Snakemake executor plugin against real SLURM daemons (tests/test_slurm.py).
# Needs root and Debian/Ubuntu apt (Debian 12: SLURM 22.05, MariaDB 10.11).
#
#   scripts/local_slurm.sh install  only install the packages that are missing (what .ci/run calls)
#   scripts/local_slurm.sh up       install the packages if missing, write the config under
#                                   $DDBENCH_SLURM_DIR, start the daemons in the background,
#                                   wait until `sinfo` shows the node idle
#   scripts/local_slurm.sh status   daemons, node and queue
#   scripts/local_slurm.sh down     stop every daemon started here; none is left running
#
# SLURM's commands (and Snakemake, which calls them) then talk to this cluster:
#   sinfo; sacct; snakemake --profile profiles/slurm ...
# They find it through /etc/slurm/slurm.conf, which `up` links to $DDBENCH_SLURM_DIR/slurm.conf
# and `down` removes. SLURM_CONF alone is not enough: the executor's job-step plugin
# (snakemake-executor-plugin-slurm-jobstep 0.6) drops every SLURM_* variable but the job's
# identity before it calls `srun` inside the job. `up` refuses to replace a system slurm.conf.
#
# The cluster: one node (the host's short name, all its CPUs, 90% of its memory, no GPU) in
# one partition, `local`. Daemons: munged (authentication), mariadbd + slurmdbd (accounting:
# without slurmdbd, SLURM 22.05's `sacct` answers only "Slurm accounting storage is disabled";
# with it, sacct lists each job with its Snakemake rule, which the plugin puts in the job
# comment), slurmctld (controller) and slurmd (runs the jobs). Nothing needs systemd or cgroups:
# job processes are tracked through /proc (proctrack/linuxproc) and not confined (task/none).
# State, logs, the munge key and the database live under $DDBENCH_SLURM_DIR; the daemons listen
# on 127.0.0.1, ports $DDBENCH_SLURM_PORT (6817: slurmctld) and the next three (slurmd, slurmdbd,
# mariadbd); munged uses munge's default socket (SLURM's clients reach slurmdbd through it
# whatever AuthInfo says); a munged already running there (the system's) is used as it is.
set -euo pipefail

DIR=${DDBENCH_SLURM_DIR:-/tmp/ddbench-slurm}
PORT=${DDBENCH_SLURM_PORT:-6817}
CONF=$DIR/slurm.conf
SYSTEM_CONF=/etc/slurm/slurm.conf
# sacctmgr (22.05) ignored AuthInfo=socket=... on its way to slurmdbd: use munge's default socket.
MUNGE_SOCKET=/run/munge/munge.socket.2
DB_SOCKET=$DIR/db/mysqld.sock
DB_PASS=ddbench-local
PACKAGES=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)   # stop order; start is the reverse

log() { echo "local_slurm: $*" >&2; }
die() { log "$*"; exit 1; }
pid_alive() { [ -s "$DIR/run/$1.pid" ] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null; }
# Wait up to $2 seconds for the command $1 to succeed.
wait_for() { local i; for ((i = 0; i < $2 * 2; i++)); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null || die "needs apt-get to install ${missing[*]}"
  log "installing ${missing[*]} (apt-get, about a minute)"
  # The packages' postinst scripts try to start their daemons through systemd/invoke-rc.d; where
  # there is none that is refused, harmlessly: this script starts its own.
  { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; }
  } >"$DIR/log/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed: see $DIR/log/apt.log"
}

write_config() {
  local node cpus mem
  node=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  [ -s "$DIR/munge/munge.key" ] || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
  cat >"$CONF" <<EOF
# Written by scripts/local_slurm.sh: a one-node cluster on $node, state under $DIR.
ClusterName=ddbench
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd, no cgroups: track job processes through /proc, do not confine them.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# Accounting through slurmdbd; keep the job comment (the plugin writes the rule name there).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
AccountingStoreFlags=job_comment
# Like a real cluster: a job must name an account the database knows (user root has account root).
AccountingStorageEnforce=associations
JobCompType=jobcomp/none
# Short timers, so a test cluster reacts in seconds.
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmdbd refuses a config that others can read (it holds the database password).
  (umask 077 && cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$node
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  )
}

link_config() {
  if [ -e "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" != "$CONF" ]; then
    die "$SYSTEM_CONF exists and is not this script's: a SLURM is configured here already"
  fi
  mkdir -p "$(dirname "$SYSTEM_CONF")"
  ln -sfn "$CONF" "$SYSTEM_CONF"
}

unlink_config() {
  if [ "$(readlink "$SYSTEM_CONF" 2>/dev/null)" = "$CONF" ]; then rm -f "$SYSTEM_CONF"; fi
}

start_munged() {
  pid_alive munged && return
  # A munged already serving the socket (the system's): use it.
  if munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
    log "using the munged already running on $MUNGE_SOCKET"
    return
  fi
  mkdir -p "$(dirname "$MUNGE_SOCKET")"
  # --force: the state dir may sit under /tmp, whose sticky world-writable bit munged distrusts.
  munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || die "munged did not start: $(tail -n 3 "$DIR/log/munged.log" 2>/dev/null)"
}

start_mariadbd() {
  pid_alive mariadbd && return
  local fresh=0 sql="mariadb --no-defaults --socket=$DB_SOCKET -uroot"
  if [ ! -d "$DIR/db/data/mysql" ]; then
    fresh=1
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/db/data" --skip-test-db --innodb-log-file-size=16M \
      >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: see $DIR/log/mariadb-install.log"
  fi
  # Native AIO is off: sandboxed kernels (gVisor) and some container runtimes lack io_submit.
  nohup mariadbd --no-defaults --user=root --datadir="$DIR/db/data" --bind-address=127.0.0.1 \
    --port=$((PORT + 3)) --socket="$DB_SOCKET" --pid-file="$DIR/run/mariadbd.pid" \
    --log-error="$DIR/log/mariadbd.log" --innodb-use-native-aio=0 --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
    >/dev/null 2>&1 &
  wait_for "mariadb-admin --no-defaults --socket=$DB_SOCKET -uroot ping" 60 \
    || die "mariadbd did not start: $(tail -n 5 "$DIR/log/mariadbd.log" 2>/dev/null)"
  if [ $fresh = 1 ]; then
    $sql -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
             GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
      || die "could not create the slurm database user"
  fi
}

start_slurm() {
  export SLURM_CONF=$CONF
  if ! pid_alive slurmdbd; then
    slurmdbd || die "slurmdbd did not start: $(tail -n 5 "$DIR/log/slurmdbd.log" 2>/dev/null)"
  fi
  # slurmctld registers the cluster with slurmdbd itself, once slurmdbd answers.
  wait_for "timeout 10 sacctmgr -n list cluster" 60 || die "slurmdbd does not answer: $(tail -n 5 "$DIR/log/slurmdbd.log")"
  pid_alive slurmctld || slurmctld || die "slurmctld did not start: $(tail -n 5 "$DIR/log/slurmctld.log" 2>/dev/null)"
  pid_alive slurmd || slurmd || die "slurmd did not start: $(tail -n 5 "$DIR/log/slurmd.log" 2>/dev/null)"
}

wait_idle() {
  local state="" i
  for ((i = 0; i < 60; i++)); do
    state=$(SLURM_CONF=$CONF sinfo -h -N -o %t 2>/dev/null | head -n 1)
    case $state in
      idle | mix | alloc) return 0 ;;
      down* | drain*) SLURM_CONF=$CONF scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 1
  done
  die "the node is not idle after 60 s (sinfo: '${state:-no answer}'); logs in $DIR/log/"
}

stop_daemons() {
  local name pid i
  # Jobs first, so that no job step outlives its slurmd.
  if pid_alive slurmctld && [ -n "$(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null)" ]; then
    SLURM_CONF=$CONF scancel --full $(SLURM_CONF=$CONF squeue -h -o %i) 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do [ -z "$(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
  fi
  for name in "${DAEMONS[@]}"; do
    pid_alive "$name" || { rm -f "$DIR/run/$name.pid"; continue; }
    pid=$(cat "$DIR/run/$name.pid")
    kill -TERM "$pid"
    wait_for "! kill -0 $pid" 30 || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$DIR/run/$name.pid"
  done
  # A job step still alive (slurmstepd can outlive slurmd): only this cluster's, whose log is ours.
  for pid in $(pgrep -x slurmstepd || true); do
    if ls -l "/proc/$pid/fd" 2>/dev/null | grep -qF "$DIR/"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

case ${1:-} in
  install)
    [ "$(id -u)" -eq 0 ] || die "needs root (apt-get)"
    mkdir -p "$DIR/log"
    install_packages
    ;;
  up)
    [ "$(id -u)" -eq 0 ] || die "needs root (apt-get, and slurmd starts jobs as their user)"
    mkdir -p "$DIR"/{munge,log,run,db,spool/ctld,spool/d}
    chmod 700 "$DIR/munge"
    install_packages
    write_config
    link_config
    start_munged
    start_mariadbd
    start_slurm
    wait_idle
    log "up: node $(hostname -s) idle in partition 'local' ($(sinfo -V)); config $SYSTEM_CONF -> $CONF"
    ;;
  down)
    stop_daemons
    unlink_config
    log "down: no daemon left running (state kept in $DIR)"
    ;;
  status)
    for name in "${DAEMONS[@]}"; do
      if pid_alive "$name"; then echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"; else echo "$name: stopped"; fi
    done
    if pid_alive slurmctld; then SLURM_CONF=$CONF sinfo && SLURM_CONF=$CONF squeue; fi
    ;;
  *)
    sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
