#!/usr/bin/env bash
# Throwaway PostgreSQL server from the distribution's packages, for tests and CI.
#
#   eval "$(scripts/pg_temp.sh start DIR)"   # prints: export METAFORA_PG_URL=... METAFORA_PG_DIR=DIR
#   scripts/pg_temp.sh createdb DIR NAME     # another (fresh) database; prints its URL
#   scripts/pg_temp.sh pause DIR             # stops the server, keeps its data (outage tests)
#   scripts/pg_temp.sh resume DIR            # starts it again on the same port
#   scripts/pg_temp.sh stop DIR              # stops the server and removes DIR
#
# The superuser is `metafora` with trust auth on 127.0.0.1 (no password); the unix socket lives
# in DIR, the server log in DIR/log. As root, the server runs as the `postgres` system user
# (PostgreSQL refuses to run as root), so DIR and its parents must be reachable by that user
# (/tmp/... is). Only the export lines go to stdout; progress and errors go to stderr.
set -euo pipefail

die() { echo "pg_temp.sh: $*" >&2; exit 1; }
usage() { die "usage: $0 start DIR | createdb DIR NAME | pause DIR | resume DIR | stop DIR"; }

# Newest /usr/lib/postgresql/*/bin, else whatever initdb is on PATH.
pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n "$d" && -x "$d/initdb" ]]; then echo "$d"; return; fi
    command -v initdb >/dev/null 2>&1 || die "no PostgreSQL server binaries (apt-get install postgresql)"
    dirname "$(readlink -f "$(command -v initdb)")"
}

# Runs a server binary as an unprivileged user (`postgres` when we are root).
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user"
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A free loopback port: the kernel's pick through python3, else a random one nobody answers on.
free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local p i
    for ((i = 0; i < 50; i++)); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port found"
}

# Starts the server of DIR on PORT. Durability is pointless for a throwaway server: fsync off
# makes the tests faster.
pg_start() {
    as_pg "$1/pg_ctl" -D "$2/data" -l "$2/log" -w -t 60 \
        -o "-p $3 -k $2 -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >>"$2/log" 2>&1 || die "pg_ctl start failed, see $2/log"
}

# Port of a server started by this script in DIR.
port_of() { [[ -f "$1/port" ]] || die "$1 holds no server started by this script (no $1/port)"; cat "$1/port"; }

cmd=${1:-}; [[ -n "$cmd" ]] || usage
case "$cmd" in
start)
    [[ $# -eq 2 ]] || usage
    mkdir -p "$2"
    dir=$(readlink -f "$2")
    [[ -z "$(ls -A "$dir")" ]] || die "$dir is not empty"
    # The socket path (DIR/.s.PGSQL.PORT) must fit in 107 bytes.
    (( ${#dir} < 90 )) || die "$dir is too long a path for a unix socket; use a shorter one"
    bin=$(pg_bin)
    port=$(free_port)
    log="$dir/log"
    touch "$log"
    if [[ $(id -u) -eq 0 ]]; then chown -R postgres: "$dir"; fi
    as_pg test -w "$dir" || die "user postgres cannot write $dir (are its parents traversable?)"
    echo "pg_temp.sh: $bin, port $port, log $log" >&2
    as_pg "$bin/initdb" -D "$dir/data" -A trust -U metafora -E UTF8 --locale=C >>"$log" 2>&1 \
        || die "initdb failed, see $log"
    pg_start "$bin" "$dir" "$port"
    echo "$port" >"$dir/port"
    for _ in $(seq 1 60); do
        "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break
        sleep 0.5
    done
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" || die "server not ready after 30 s, see $log"
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U metafora metafora >>"$log" 2>&1 \
        || die "createdb metafora failed, see $log"
    echo "export METAFORA_PG_URL=postgres://metafora@127.0.0.1:$port/metafora; export METAFORA_PG_DIR=$dir"
    ;;
createdb)
    [[ $# -eq 3 ]] || usage
    port=$(port_of "$2")
    bin=$(pg_bin)
    [[ "$3" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "database name must match [A-Za-z_][A-Za-z0-9_]*"
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U metafora "$3" || die "createdb $3 failed"
    echo "postgres://metafora@127.0.0.1:$port/$3"
    ;;
pause)
    [[ $# -eq 2 ]] || usage
    port_of "$2" >/dev/null
    as_pg "$(pg_bin)/pg_ctl" -D "$2/data" -w -t 60 -m immediate stop >>"$2/log" 2>&1 \
        || die "pg_ctl stop failed, see $2/log"
    ;;
resume)
    [[ $# -eq 2 ]] || usage
    pg_start "$(pg_bin)" "$(readlink -f "$2")" "$(port_of "$2")"
    ;;
stop)
    [[ $# -eq 2 ]] || usage
    [[ -d "$2" ]] || die "no such directory: $2"
    dir=$(readlink -f "$2")
    # Refuse to delete a directory this script did not create.
    [[ -f "$dir/port" || -f "$dir/data/PG_VERSION" ]] || die "$dir does not look like a pg_temp.sh dir"
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        bin=$(pg_bin)
        as_pg "$bin/pg_ctl" -D "$dir/data" -w -t 60 -m fast stop >>"$dir/log" 2>&1 \
            || die "pg_ctl stop failed, see $dir/log"
    fi
    rm -rf "$dir"
    ;;
*) usage ;;
esac
