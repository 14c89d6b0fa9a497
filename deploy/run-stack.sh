#!/usr/bin/env bash
# The trainguard monitoring stack without Docker (a RunPod pod has none): Prometheus,
# Alertmanager, `trainguard exporter` and `trainguard remediator` with the files in
# deploy/, on 127.0.0.1, in the foreground.  Ctrl-C (or SIGTERM) stops everything; exit 0.
#
#   deploy/run-stack.sh --config trainguard.yaml [--state DIR] [--tunables FILE]
#                       [--prometheus-port N] [--alertmanager-port N] [--no-remediator] [--check]
#
# Ports: Prometheus 9090 and Alertmanager 9093 unless given; the exporter and remediator
# listen where the config says (exporter.listen, remediator.listen: 9842, 9843 by default).
# Every port is checked before anything starts.  --state (default: .trainguard-stack/
# beside the config) keeps Prometheus' data, Alertmanager's silences and the logs.
# --tunables FILE replaces rules/tunables.yml (checked against the records the rules read).
# --check runs every check and starts nothing.  Exit 2: a config, tunables or port problem.
# Needs: prometheus, prometheus-alertmanager (Debian/Ubuntu packages) and trainguard on
# PATH (or in the repository's .venv).  Grafana is optional: see deploy/README.md.
set -euo pipefail

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}
say() { echo "run-stack.sh: $*" >&2; }
die() { say "$1"; exit "${2:-2}"; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONFIG="" STATE="" TUNABLES="" REMEDIATOR=1 CHECK=0 PROM_PORT=9090 AM_PORT=9093
port_arg() {  # option, value
    [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le 65535 ] \
        || die "$1 needs a port number (1-65535), got '$2'"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
        --state) STATE="${2:?--state needs a folder}"; shift 2 ;;
        --tunables) TUNABLES="${2:?--tunables needs a file}"; shift 2 ;;
        --prometheus-port) port_arg "$1" "${2:-}"; PROM_PORT="$2"; shift 2 ;;
        --alertmanager-port) port_arg "$1" "${2:-}"; AM_PORT="$2"; shift 2 ;;
        --no-remediator) REMEDIATOR=0; shift ;;
        --check) CHECK=1; shift ;;
        -h|--help) usage 0 ;;
        *) say "unknown argument $1"; usage 2 ;;
    esac
done
[ -n "$CONFIG" ] || die "--config FILE is required"
[ -f "$CONFIG" ] || die "no such config file: $CONFIG"
CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
if [ -n "$TUNABLES" ]; then
    [ -f "$TUNABLES" ] || die "no such tunables file: $TUNABLES"
    TUNABLES="$(cd "$(dirname "$TUNABLES")" && pwd)/$(basename "$TUNABLES")"
fi
# Beside the config, not wherever the script was started (so never inside this checkout
# by accident; .gitignore lists the name anyway).
STATE="${STATE:-$(dirname "$CONFIG")/.trainguard-stack}"
mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"

need() { command -v "$1" >/dev/null || die "$1 not found ($2)"; }
need prometheus "apt-get install prometheus"
need prometheus-alertmanager "apt-get install prometheus-alertmanager"
need setsid "apt-get install util-linux"
TRAINGUARD="$(command -v trainguard || true)"
[ -n "$TRAINGUARD" ] || TRAINGUARD="$HERE/../.venv/bin/trainguard"
[ -x "$TRAINGUARD" ] || die "trainguard not found (pip install trainguard)"
# The Python trainguard is installed in (from its console script), to read the config.
PYTHON="$(head -n1 "$TRAINGUARD" | sed 's/^#!//')"

# Every check before anything starts: config, token, tunables, ports.  Then the two
# generated files (deploy/run_stack.py: Alertmanager's config is made in one place).
prep=(prepare --config "$CONFIG" --state "$STATE" --prometheus-port "$PROM_PORT"
      --alertmanager-port "$AM_PORT")
[ -z "$TUNABLES" ] || prep+=(--tunables "$TUNABLES")
[ "$REMEDIATOR" = 1 ] || prep+=(--no-remediator)
[ "$CHECK" = 0 ] || prep+=(--check-only)
out="$("$PYTHON" "$HERE/run_stack.py" "${prep[@]}")" || exit $?
EXPORTER="" REMEDIATOR_AT=""
while IFS='=' read -r key value; do
    case "$key" in EXPORTER) EXPORTER="$value" ;; REMEDIATOR) REMEDIATOR_AT="$value" ;; esac
done <<<"$out"
if [ "$CHECK" = 1 ]; then
    say "config, tunables and ports are fine (nothing started)"
    exit 0
fi

mkdir -p "$STATE/prometheus/data" "$STATE/alertmanager/data" "$STATE/logs"
# A fresh notification log each start (silences are kept).  A stack stopped within a
# group interval of a rescue never recorded "resolved": with the old log, the next hang's
# alert (same labels) would count as already sent and wait out repeat_interval.
rm -f "$STATE/alertmanager/data/nflog"

NAMES=() PIDS=() PORTS=()
STOPPING=""
trap 'STOPPING=INT' INT
trap 'STOPPING=TERM' TERM
trap 'STOPPING=HUP' HUP

alive() {  # pid: running and not a zombie (an exited child we have not reaped yet)
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [ "${stat%% *}" != Z ]
}

stop_all() {  # TERM, newest first; KILL what is still there after 30 s; reap
    local i deadline=$((SECONDS + 30))
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        [ -z "${PIDS[i]}" ] || kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for i in "${!PIDS[@]}"; do
        [ -n "${PIDS[i]}" ] || continue  # already reaped
        while alive "${PIDS[i]}" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
        if alive "${PIDS[i]}"; then
            say "${NAMES[i]} did not stop within 30 s: killing it"
            kill -KILL "${PIDS[i]}" 2>/dev/null || true
        fi
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    PIDS=()
}
trap 'stop_all' EXIT  # whatever ends the script, nothing it started is left behind

tail_of() {  # name: the last lines of its log, indented
    tail -n 5 "$STATE/logs/$1.log" 2>/dev/null | sed 's/^/    /' >&2 || true
}

start() {  # name, host:port, command...: in its own session, so a Ctrl-C at the
    # terminal reaches only this script, which then stops each part in order
    local name="$1" port="$2"; shift 2
    setsid "$@" </dev/null >>"$STATE/logs/$name.log" 2>&1 &
    NAMES+=("$name") PIDS+=("$!") PORTS+=("$port")
    say "$name started (pid $!, log $STATE/logs/$name.log)"
}

listening() {  # host:port
    local host="${1%:*}" port="${1##*:}"
    host="${host#[}" host="${host%]}"
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

start prometheus "127.0.0.1:$PROM_PORT" prometheus \
    --config.file="$STATE/prometheus/prometheus.yml" \
    --storage.tsdb.path="$STATE/prometheus/data" --web.listen-address="127.0.0.1:$PROM_PORT"
start alertmanager "127.0.0.1:$AM_PORT" prometheus-alertmanager \
    --config.file="$STATE/alertmanager/alertmanager.yml" \
    --storage.path="$STATE/alertmanager/data" --web.listen-address="127.0.0.1:$AM_PORT" \
    --cluster.listen-address=
start exporter "$EXPORTER" "$TRAINGUARD" exporter --config "$CONFIG"
if [ "$REMEDIATOR" = 1 ]; then
    start remediator "$REMEDIATOR_AT" "$TRAINGUARD" remediator --config "$CONFIG"
fi

# Up means listening; a part that dies first takes the stack down with its log's tail.
died() {  # index, status (the process is reaped already)
    PIDS[$1]=""
    say "${NAMES[$1]} exited (status $2); the end of $STATE/logs/${NAMES[$1]}.log:"
    tail_of "${NAMES[$1]}"
    say "stopping the rest: half a stack watches nothing and says nothing"
    stop_all
    exit 1
}
deadline=$((SECONDS + 60))
for i in "${!PIDS[@]}"; do
    until listening "${PORTS[i]}"; do
        [ -z "$STOPPING" ] || break 2
        if ! alive "${PIDS[i]}"; then wait "${PIDS[i]}" && rc=0 || rc=$?; died "$i" "$rc"; fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "${NAMES[i]} is not listening on ${PORTS[i]} after 60 s; its log ends:"
            tail_of "${NAMES[i]}"
            exit 1
        fi
        sleep 0.2
    done
done

if [ -z "$STOPPING" ]; then
    case "$(prometheus --version 2>&1 | head -n1)" in
        *"version 2."*) ui="/classic" ;;  # Debian's 2.x serves only the classic pages
        *) ui="" ;;
    esac
    say "up. Where to look while it runs (these pages go away when it stops):"
    [ "$REMEDIATOR" = 0 ] || say "  remediator status page  http://$REMEDIATOR_AT/"
    say "  Prometheus alerts       http://127.0.0.1:$PROM_PORT$ui/alerts"
    say "  Prometheus targets      http://127.0.0.1:$PROM_PORT$ui/targets"
    say "  Alertmanager (no web UI in Debian's package; JSON, or amtool):"
    say "                          http://127.0.0.1:$AM_PORT/api/v2/alerts"
    say "                          amtool --alertmanager.url=http://127.0.0.1:$AM_PORT alert query"
    say "  exporter metrics        http://$EXPORTER/metrics"
    say "  logs                    $STATE/logs/"
    say "Ctrl-C stops everything."
fi

set +e
while [ -z "$STOPPING" ]; do
    DEAD=""
    wait -n -p DEAD "${PIDS[@]}"
    rc=$?
    [ -z "$STOPPING" ] || break
    for i in "${!PIDS[@]}"; do
        [ "${PIDS[i]}" != "$DEAD" ] || died "$i" "$rc"
    done
done
say "stopping (SIG$STOPPING)"
stop_all
say "stopped"
exit 0
