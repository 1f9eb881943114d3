#!/usr/bin/env bash
# A private single-node SLURM cluster (with accounting) for the `slurm`-marked tests.
#
#   .ci/slurm-cluster.sh start            install what is missing (apt-get), start the daemons
#   .ci/slurm-cluster.sh stop             stop every process this cluster started (by pid)
#   .ci/slurm-cluster.sh status           which daemons run, node state, where the logs are
#   .ci/slurm-cluster.sh env              `export SLURM_CONF=...` lines, for eval "$(...)"
#   .ci/slurm-cluster.sh run [--optional] -- CMD...
#                                         start, run CMD against the cluster, always stop;
#                                         exits with CMD's status. --optional: where the
#                                         cluster cannot be set up (not root, no apt-get), just
#                                         run CMD. IOVPR_SLURM=0 never starts a cluster.
#   .ci/slurm-cluster.sh purge            stop, then delete the cluster directory
#
# Everything (configuration, munge key, MariaDB data, slurmctld state, slurmd spool, pid
# files, logs) lives under $IOVPR_SLURM_DIR (default ${TMPDIR:-/tmp}/iovpr-slurm); nothing is
# written under /etc or /run and nothing is registered with an init system (CI has no
# systemd). Daemons listen on 127.0.0.1 only, on free ports chosen at the first start.
# Clients find the cluster through SLURM_CONF=$IOVPR_SLURM_DIR/etc/slurm.conf.
#
# Needs root (slurmd starts jobs as their owner; apt-get). Idempotent: `start` on a running
# cluster only checks it (and restarts the SLURM daemons if their configuration changed).
# Every daemon is started with IOVPR_SLURM_CLUSTER=<dir> in its environment, so `stop` finds
# exactly this cluster's processes (and their children, e.g. slurmstepd and job processes)
# by pid, even when a pid file is stale or a daemon forked.
set -euo pipefail

DIR=${IOVPR_SLURM_DIR:-${TMPDIR:-/tmp}/iovpr-slurm}
CLUSTER=iovpr-ci
PARTITION=debug
PACKAGES=(munge mariadb-server slurm-client slurmctld slurmd slurmdbd)
MARK=IOVPR_SLURM_CLUSTER

ETC=$DIR/etc LOG=$DIR/log RUN=$DIR/run
export SLURM_CONF=$ETC/slurm.conf
MUNGE_SOCKET=$RUN/munged.sock
MYSQL_SOCKET=$RUN/mariadb.sock
T0=$(date +%s.%N)

say() { printf 'slurm-cluster: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --- processes -----------------------------------------------------------------------------

pid_alive() { [[ -n ${1:-} && -d /proc/$1 ]] && kill -0 "$1" 2>/dev/null; }

# Pids whose environment carries this cluster's marker, plus all their descendants.
cluster_pids() {
    local marked=() pid
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        if grep -qzxF "$MARK=$DIR" "/proc/$pid/environ" 2>/dev/null; then
            marked+=("$pid")
        fi
    done
    ((${#marked[@]})) || return 0
    # Walk the process tree: children of marked processes (job steps, user tasks).
    awk -v seeds="${marked[*]}" '
        BEGIN { n = split(seeds, s, " "); for (i = 1; i <= n; i++) keep[s[i]] = 1 }
        { parent[$1] = $2 }
        END {
            changed = 1
            while (changed) {
                changed = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
            }
            for (p in keep) print p
        }' < <(for stat in /proc/[0-9]*/stat; do
                   # pid (comm) state ppid: comm may hold spaces, so cut after the last ")"
                   line=$(cat "$stat" 2>/dev/null) || continue
                   rest=${line##*) }
                   set -- $rest
                   pid=${stat#/proc/}; pid=${pid%/stat}
                   echo "$pid $2"
               done)
}

daemon_pid() {  # daemon_pid NAME -> pid if that daemon of this cluster is running
    local file=$RUN/$1.pid pid
    [[ -s $file ]] || return 1
    pid=$(tr -dc '0-9' <"$file")
    pid_alive "$pid" || return 1
    grep -qzxF "$MARK=$DIR" "/proc/$pid/environ" 2>/dev/null || return 1
    echo "$pid"
}

launch() {  # launch NAME CMD...: start a daemon carrying the marker, detached from us
    local name=$1; shift
    env "$MARK=$DIR" SLURM_CONF="$SLURM_CONF" setsid "$@" </dev/null >>"$LOG/$name.out" 2>&1 &
    disown || true
}

wait_for() {  # wait_for SECONDS DAEMON CMD...: poll CMD until it succeeds; fail early if DAEMON died
    local limit=$1 name=$2; shift 2
    local log=$LOG/$name.log start=$SECONDS
    until "$@" >/dev/null 2>&1; do
        # Daemons write their pid file within a few seconds; no live pid after 10 s means
        # the daemon exited (its log says why).
        if ((SECONDS - start >= limit)) || { ((SECONDS - start >= 10)) && ! daemon_pid "$name" >/dev/null; }; then
            say "$name did not come up within $((SECONDS - start))s; last lines of $log:"
            tail -n 20 "$log" >&2 2>/dev/null || true
            die "$name failed to start (log: $log)"
        fi
        sleep 0.2
    done
}

# --- installation --------------------------------------------------------------------------

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages)
    [[ -z $missing ]] && return 0
    command -v apt-get >/dev/null || die "missing packages ($missing) and no apt-get"
    say "installing: $(echo $missing)"
    # Keep the packages' maintainer scripts from starting system-wide daemons (no systemd
    # here; invoke-rc.d would start them from /etc/init.d). Only remove a policy we created.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local apt=(apt-get -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
               --no-install-recommends install)
    local status=0
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" $missing >"$LOG/apt.log" 2>&1 || status=$?
    if ((status != 0)); then
        say "apt-get install failed; refreshing package lists and retrying"
        { apt-get -q update && DEBIAN_FRONTEND=noninteractive "${apt[@]}" $missing; } \
            >>"$LOG/apt.log" 2>&1 || status=$?
        [[ -z $(missing_packages) ]] && status=0
    fi
    ((created_policy)) && rm -f "$policy"
    ((status == 0)) || { tail -n 20 "$LOG/apt.log" >&2; die "apt-get failed (log: $LOG/apt.log)"; }
    say "installed in $(elapsed)s"
}

# --- configuration -------------------------------------------------------------------------

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {  # first free port at or above $1
    local port=$1
    while port_in_use "$port"; do port=$((port + 1)); done
    echo "$port"
}

load_settings() {
    if [[ -s $ETC/settings ]]; then
        # shellcheck disable=SC1091
        source "$ETC/settings"
        return
    fi
    local port=16800 var
    for var in DB_PORT DBD_PORT SLURMCTLD_PORT SLURMD_PORT; do
        port=$(pick_port "$port")
        printf -v "$var" '%s' "$port"
        port=$((port + 1))
    done
    DB_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    cat >"$ETC/settings" <<EOF
DB_PORT=$DB_PORT
DBD_PORT=$DBD_PORT
SLURMCTLD_PORT=$SLURMCTLD_PORT
SLURMD_PORT=$SLURMD_PORT
DB_PASSWORD=$DB_PASSWORD
EOF
    chmod 600 "$ETC/settings"
}

node_cpus() {
    # Advertise at least 8 CPUs (config_overrides) so array tasks of the tests run side by
    # side on a 2-core CI machine; override with IOVPR_SLURM_CPUS.
    local cpus=${IOVPR_SLURM_CPUS:-$(nproc)}
    [[ -z ${IOVPR_SLURM_CPUS:-} && $cpus -lt 8 ]] && cpus=8
    echo "$cpus"
}

node_memory_mb() {
    local kb
    kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
    echo $((kb / 1024 * 3 / 4))
}

write_if_changed() {  # write_if_changed FILE MODE < content; returns 0 if the file changed
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$file"
}

write_configs() {  # sets CONFIG_CHANGED=1 when slurm.conf or slurmdbd.conf changed
    local host cpus mem
    host=$(hostname -s)
    cpus=$(node_cpus)
    mem=$(node_memory_mb)
    CONFIG_CHANGED=0
    write_if_changed "$ETC/slurm.conf" 644 <<EOF && CONFIG_CHANGED=1 || true
# Written by .ci/slurm-cluster.sh; regenerated on every start.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups without systemd: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=256
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
# Seconds between SIGTERM and SIGKILL (submitit jobs ignore SIGTERM): keep cancels prompt.
KillWait=2
InactiveLimit=0
MinJobAge=300
MaxArraySize=10001
# submitit reads job states from sacct: without accounting every state is UNKNOWN.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# For the slurmdbd connection this names the munge socket (our munged is not the default).
AccountingStoragePass=$MUNGE_SOCKET
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF && CONFIG_CHANGED=1 || true
# Written by .ci/slurm-cluster.sh; regenerated on every start.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$DBD_PORT
CommunicationParameters=NoInAddrAny
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
}

# --- daemons -------------------------------------------------------------------------------

start_munge() {
    daemon_pid munged >/dev/null && return 0
    if [[ ! -s $ETC/munge.key ]]; then
        head -c 1024 /dev/urandom >"$ETC/munge.key"
    fi
    chmod 400 "$ETC/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    launch munged /usr/sbin/munged --force --key-file="$ETC/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" --seed-file="$DIR/munge.seed"
    wait_for 15 munged \
        bash -c "munge --socket='$MUNGE_SOCKET' -n | unmunge --socket='$MUNGE_SOCKET'"
}

mysql_client() { mariadb --no-defaults --protocol=socket --socket="$MYSQL_SOCKET" -uroot "$@"; }

start_mariadb() {
    daemon_pid mariadb >/dev/null && return 0
    local datadir=$DIR/mariadb fresh=0
    if [[ ! -d $datadir/mysql ]]; then
        fresh=1
        rm -rf "$datadir"
        mariadb-install-db --no-defaults --user=root --datadir="$datadir" \
            --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
            || { tail -n 20 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed (log: $LOG/mariadb-install.log)"; }
    fi
    # slurmdbd needs a large buffer pool and a long lock timeout (its documented minimums).
    launch mariadb /usr/sbin/mariadbd --no-defaults --user=root --datadir="$datadir" \
        --socket="$MYSQL_SOCKET" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$RUN/mariadb.pid" --log-error="$LOG/mariadb.log" \
        --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
        --max-connections=100 --skip-log-bin
    wait_for 60 mariadb mysql_client -e "SELECT 1"
    if ((fresh)) || ! mysql_client -N -e "SELECT 1 FROM mysql.user WHERE user='slurm'" | grep -q 1; then
        mysql_client <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
    fi
}

start_slurmdbd() {
    daemon_pid slurmdbd >/dev/null && return 0
    launch slurmdbd /usr/sbin/slurmdbd
    wait_for 60 slurmdbd port_in_use "$DBD_PORT"
}

start_slurmctld() {
    daemon_pid slurmctld >/dev/null && return 0
    launch slurmctld /usr/sbin/slurmctld
    wait_for 60 slurmctld scontrol ping
}

start_slurmd() {
    daemon_pid slurmd >/dev/null && return 0
    launch slurmd /usr/sbin/slurmd
    wait_for 30 slurmd daemon_pid slurmd
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n 1; }

node_ready() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing) ]]; }

wait_node_ready() {
    local deadline=$((SECONDS + 60)) state
    until node_ready; do
        state=$(node_state)
        if [[ $state =~ (down|drain|fail) ]]; then
            # A node left down/drained by an earlier run (e.g. killed mid-job): bring it back.
            scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
        fi
        ((SECONDS >= deadline)) && die "node never became ready (state '$state'; log: $LOG/slurmd.log)"
        sleep 0.3
    done
}

ensure_cluster_registered() {
    # slurmctld registers its cluster with slurmdbd on connect; wait until it has, so the
    # first job is accounted (otherwise sacct reports nothing for it).
    local deadline=$((SECONDS + 30))
    until sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; do
        if ((SECONDS >= deadline)); then
            sacctmgr -i add cluster "$CLUSTER" >/dev/null
            kill_daemon slurmctld
            start_slurmctld
            return
        fi
        sleep 0.3
    done
}

kill_daemon() {  # kill_daemon NAME: stop one daemon of this cluster, wait for it to exit
    local pid
    pid=$(daemon_pid "$1") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while pid_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
}

# --- commands ------------------------------------------------------------------------------

cmd_start() {
    [[ $(id -u) == 0 ]] || die "must run as root (slurmd runs jobs as their owner; apt-get)"
    mkdir -p "$ETC" "$LOG" "$RUN" "$DIR/state" "$DIR/spool"
    chmod 700 "$DIR"
    install_packages
    load_settings
    write_configs
    if ((CONFIG_CHANGED)); then
        # slurmctld, slurmd and slurmdbd read their configuration only at start.
        kill_daemon slurmd
        kill_daemon slurmctld
        kill_daemon slurmdbd
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    ensure_cluster_registered
    start_slurmd
    wait_node_ready
    printf 'export SLURM_CONF=%q\nexport IOVPR_SLURM_DIR=%q\n' "$SLURM_CONF" "$DIR" >"$DIR/env"
    say "up in $(elapsed)s: cluster $CLUSTER, partition $PARTITION, node $(hostname -s) ($(node_cpus) CPUs)"
    say "clients: export SLURM_CONF=$SLURM_CONF   (or: eval \"\$($0 env)\")"
    say "logs: $LOG/{munged,mariadb,slurmdbd,slurmctld,slurmd}.log"
}

cmd_stop() {
    T0=$(date +%s.%N)
    local pids
    pids=$(cluster_pids | sort -n | tr '\n' ' ')
    if [[ -z ${pids// /} ]]; then
        say "nothing running (dir $DIR)"
        rm -f "$DIR/env"
        return 0
    fi
    # Jobs first (their steps would otherwise outlive slurmd), then the daemons; mariadbd
    # shuts down cleanly on TERM, the others exit at once.
    kill -TERM $pids 2>/dev/null || true
    local deadline=$((SECONDS + 20)) alive
    while :; do
        alive=""
        for pid in $pids; do pid_alive "$pid" && alive+="$pid "; done
        [[ -z $alive ]] && break
        ((SECONDS >= deadline)) && { kill -KILL $alive 2>/dev/null || true; sleep 0.5; break; }
        sleep 0.2
    done
    # Anything the dying daemons spawned in the meantime.
    local late
    late=$(cluster_pids | tr '\n' ' ')
    [[ -n ${late// /} ]] && { kill -KILL $late 2>/dev/null || true; sleep 0.2; }
    late=$(cluster_pids | tr '\n' ' ')
    rm -f "$DIR/env" "$RUN"/*.pid
    [[ -z ${late// /} ]] || die "processes still alive after SIGKILL: $late"
    say "stopped $(wc -w <<<"$pids") processes in $(elapsed)s; logs kept in $LOG"
}

cmd_status() {
    local name pid up=1
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        if pid=$(daemon_pid "$name"); then
            printf '%-10s running (pid %s)  log %s\n' "$name" "$pid" "$LOG/$name.log"
        else
            printf '%-10s stopped           log %s\n' "$name" "$LOG/$name.log"
            up=0
        fi
    done
    if ((up)); then
        printf 'node       %s\n' "$(node_state)"
        printf 'SLURM_CONF=%s\n' "$SLURM_CONF"
    fi
    ((up))
}

cmd_env() {
    [[ -s $DIR/env ]] || die "cluster not started (no $DIR/env); run: $0 start"
    cat "$DIR/env"
}

can_start() {  # root, and the packages installed or installable
    [[ $(id -u) == 0 ]] || return 1
    [[ -z $(missing_packages) ]] && return 0
    command -v apt-get >/dev/null
}

cmd_run() {
    local optional=0
    while [[ ${1:-} == --* ]]; do
        case $1 in
            --optional) optional=1; shift ;;
            --) shift; break ;;
            *) die "unknown option $1" ;;
        esac
    done
    (($#)) || die "usage: $0 run [--optional] -- COMMAND [ARGS...]"
    if [[ ${IOVPR_SLURM:-1} == 0 ]] || { ((optional)) && ! can_start; }; then
        say "no SLURM test cluster here (needs root and apt-get; IOVPR_SLURM=${IOVPR_SLURM:-1}): the slurm-marked tests will skip"
        exec "$@"
    fi
    trap 'cmd_stop' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    cmd_start
    # The tests fail, rather than skip, when the cluster they were promised does not answer.
    export IOVPR_SLURM_DIR=$DIR IOVPR_SLURM_REQUIRED=1
    local status=0
    "$@" || status=$?
    return "$status"
}

cmd_purge() {
    cmd_stop
    [[ -d $DIR ]] && rm -rf "$DIR"
    say "removed $DIR"
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    run) shift; cmd_run "$@" ;;
    purge) cmd_purge ;;
    *) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
