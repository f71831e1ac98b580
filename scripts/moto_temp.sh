#!/usr/bin/env bash
# Throwaway S3 (moto) server for tests and CI, with a bucket `metafora`.
#
#   eval "$(scripts/moto_temp.sh start DIR VENV)"   # VENV has moto[server]==5.2.5 installed
#   scripts/moto_temp.sh stop DIR                   # kills it and removes DIR
#
# Installs nothing: VENV must already hold moto_server, e.g.
#   python3 -m venv VENV && VENV/bin/pip install -q 'moto[server]==5.2.5'
# Only the export line goes to stdout; the server logs to DIR/log, its pid is in DIR/pid.
# moto does not check signatures but answers 403 to unsigned object GETs: sign requests, e.g.
#   curl --aws-sigv4 aws:amz:us-east-1:s3 --user test:test -T file "$AWS_ENDPOINT_URL/metafora/ci/f"
set -euo pipefail

die() { echo "moto_temp.sh: $*" >&2; exit 1; }
usage() { die "usage: $0 start DIR VENV | stop DIR"; }

cmd=${1:-}; [[ -n "$cmd" ]] || usage
case "$cmd" in
start)
    [[ $# -eq 3 ]] || usage
    server="$3/bin/moto_server"
    [[ -x "$server" ]] || die "$server not found (pip install 'moto[server]==5.2.5' into $3)"
    command -v python3 >/dev/null 2>&1 || die "python3 is needed"
    mkdir -p "$2"
    dir=$(readlink -f "$2")
    [[ ! -e "$dir/pid" ]] || die "$dir/pid exists: a server may be running there already"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Detached from our stdout, or `$(...)` in the caller would wait for the server to exit.
    nohup "$server" -H 127.0.0.1 -p "$port" </dev/null >"$dir/log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/pid"
    echo "moto_temp.sh: moto_server pid $pid, port $port, log $dir/log" >&2
    url="http://127.0.0.1:$port"
    # Wait (up to 30 s) until it answers, then create the bucket with a plain PUT.
    if ! python3 - "$url" "$pid" <<'EOF'; then
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
for _ in range(120):
    try:
        urllib.request.urlopen(url + "/", timeout=2).read()
        break
    except OSError:
        os.kill(pid, 0)  # raises once the server has died
        time.sleep(0.25)
else:
    sys.exit("timeout")
urllib.request.urlopen(urllib.request.Request(url + "/metafora", method="PUT"), timeout=10).read()
EOF
        kill "$pid" 2>/dev/null || true
        rm -f "$dir/pid"
        die "moto_server did not come up or the bucket could not be made, see $dir/log"
    fi
    echo "export AWS_ENDPOINT_URL=$url AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test" \
         "AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true METAFORA_S3_URL=s3://metafora/ci METAFORA_MOTO_DIR=$dir"
    ;;
stop)
    [[ $# -eq 2 ]] || usage
    [[ -f "$2/pid" ]] || die "no $2/pid: not a moto_temp.sh dir"
    dir=$(readlink -f "$2")
    pid=$(cat "$dir/pid")
    # Only kill the pid if it still is our moto_server (pids get reused).
    if ps -p "$pid" -o args= 2>/dev/null | grep -q moto_server; then
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    fi
    rm -rf "$dir"
    ;;
*) usage ;;
esac
