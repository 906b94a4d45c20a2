#!/usr/bin/env bash
# Serve the MLflow UI over the embedded store (mlflow/mlflow.db + mlflow/artifacts), and stop it.
#
#   mlflow/serve.sh start     start in the background, wait until it answers, print the URL
#   mlflow/serve.sh stop      stop it: the server and all its worker processes
#   mlflow/serve.sh status    say whether it runs and answers
#   mlflow/serve.sh run       run in the foreground (Ctrl-C stops it)
#
# Settings (environment; prefixed, since HOST and PORT mean other things to some shells):
#   MLFLOW_UI_HOST       interface to bind (default 127.0.0.1: only this machine can connect)
#   MLFLOW_UI_PORT       port (default 5000)
#   MLFLOW_UI_STORE      backend store URI (default sqlite:///<project>/mlflow/mlflow.db,
#                        where the sweep logs)
#   MLFLOW_UI_ARTIFACTS  artifact folder (default: "artifacts" beside a sqlite file, where
#                        sweeps/tracking.py ensure_experiment puts every experiment's files)
#   MLFLOW_UI_WORKERS    server worker processes (default 2; MLflow's 4 is a lot on 2 cores)
#   MLFLOW_UI_STATE_DIR  pid and log files, ui-<port>.pid and ui-<port>.log
#                        (default <project>/mlflow)
#   MLFLOW_UI_BIN        the mlflow executable (default .venv/bin/mlflow, else mlflow on PATH)
#
# Why a process group: `mlflow server` starts uvicorn, which forks its workers; killing only
# the parent leaves the workers holding the port. `start` runs the server under setsid, so
# it leads a process group of its own, and `stop` signals that whole group.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MLFLOW_UI_HOST="${MLFLOW_UI_HOST:-127.0.0.1}"
MLFLOW_UI_PORT="${MLFLOW_UI_PORT:-5000}"
MLFLOW_UI_STORE="${MLFLOW_UI_STORE:-sqlite:///$ROOT/mlflow/mlflow.db}"
MLFLOW_UI_WORKERS="${MLFLOW_UI_WORKERS:-2}"
MLFLOW_UI_STATE_DIR="${MLFLOW_UI_STATE_DIR:-$ROOT/mlflow}"
PID_FILE="$MLFLOW_UI_STATE_DIR/ui-$MLFLOW_UI_PORT.pid"
LOG_FILE="$MLFLOW_UI_STATE_DIR/ui-$MLFLOW_UI_PORT.log"
# Seconds to wait for the first answer: ~20 s on 2 idle cores, 90 s seen on busy ones.
MLFLOW_UI_START_TIMEOUT="${MLFLOW_UI_START_TIMEOUT:-180}"
# MLflow 3's job runner (a huey consumer per GenAI job type: 8 more processes) serves
# features this project does not use; on a 2-core machine it only competes for CPU.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

if [[ -z "${MLFLOW_UI_ARTIFACTS:-}" && "$MLFLOW_UI_STORE" == sqlite:///* ]]; then
    # sqlite:////abs/x.db -> /abs/x.db; sqlite:///rel/x.db -> rel/x.db (from here), as
    # ensure_experiment reads it.
    db="${MLFLOW_UI_STORE#sqlite:///}"
    MLFLOW_UI_ARTIFACTS="$(dirname "$db")/artifacts"
fi

find_mlflow() {
    if [[ -n "${MLFLOW_UI_BIN:-}" ]]; then
        echo "$MLFLOW_UI_BIN"
    elif [[ -x "$ROOT/.venv/bin/mlflow" ]]; then
        echo "$ROOT/.venv/bin/mlflow"
    elif command -v mlflow >/dev/null; then
        command -v mlflow
    else
        echo "mlflow/serve.sh: no mlflow executable; run 'make sweep'" \
            "or set MLFLOW_UI_BIN=/path/to/mlflow" >&2
        exit 2
    fi
}

# Sets the global array ARGS: the `mlflow server` command line.
server_args() {
    ARGS=(server --host "$MLFLOW_UI_HOST" --port "$MLFLOW_UI_PORT"
        --workers "$MLFLOW_UI_WORKERS" --backend-store-uri "$MLFLOW_UI_STORE")
    if [[ -n "${MLFLOW_UI_ARTIFACTS:-}" ]]; then
        # Experiments made by the sweep carry their own file:// artifact location (this
        # folder), which the server reads directly. This only matters for experiments created
        # through the server (a sweep with --tracking-uri http://...): their artifacts go
        # through the server's artifact proxy (mlflow-artifacts:/) into the same folder.
        mkdir -p "$MLFLOW_UI_ARTIFACTS"
        ARGS+=(--artifacts-destination "$MLFLOW_UI_ARTIFACTS")
    fi
}

url() { echo "http://$MLFLOW_UI_HOST:$MLFLOW_UI_PORT"; }

answers() { curl --silent --fail --max-time 3 "$(url)/health" >/dev/null 2>&1; }

# The pid in the pid file, if that process is still alive and is still our server (a pid
# can be reused by an unrelated process after a reboot or a crash).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "mlflow" || return 1
    echo "$pid"
}

group_alive() { pgrep -g "$1" >/dev/null 2>&1; }

start() {
    local pid mlflow
    if pid="$(running_pid)"; then
        echo "MLflow UI already running (pid $pid): $(url)"
        return 0
    fi
    if answers; then
        echo "mlflow/serve.sh: something else already answers on $(url); choose another MLFLOW_UI_PORT" >&2
        exit 1
    fi
    mlflow="$(find_mlflow)"
    mkdir -p "$MLFLOW_UI_STATE_DIR"
    server_args
    # setsid: the server leads a new process group (pgid = its pid), detached from this
    # terminal, so Ctrl-C here does not reach it and `stop` can signal the whole group.
    # Without job control the background job is no group leader, so setsid does not fork
    # and $! is the server itself.
    set +m
    setsid "$mlflow" "${ARGS[@]}" >"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$PID_FILE"
    local waited=0
    until answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "mlflow/serve.sh: the server exited; the end of $LOG_FILE:" >&2
            tail -n 20 "$LOG_FILE" >&2
            rm -f "$PID_FILE"
            exit 1
        fi
        if ((waited >= MLFLOW_UI_START_TIMEOUT)); then
            echo "mlflow/serve.sh: no answer from $(url) after ${MLFLOW_UI_START_TIMEOUT}s; see $LOG_FILE" >&2
            stop >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "MLflow UI: $(url)  (store $MLFLOW_UI_STORE; pid $pid; log $LOG_FILE)"
    echo "Stop it with: MLFLOW_UI_PORT=$MLFLOW_UI_PORT mlflow/serve.sh stop"
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        echo "MLflow UI on port $MLFLOW_UI_PORT is not running"
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
        group_alive "$pid" || break
        sleep 0.5
    done
    if group_alive "$pid"; then
        kill -KILL -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do
            group_alive "$pid" || break
            sleep 0.25
        done
    fi
    rm -f "$PID_FILE"
    echo "MLflow UI on port $MLFLOW_UI_PORT stopped (process group $pid)"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        if answers; then
            echo "MLflow UI running (pid $pid): $(url)"
        else
            echo "MLflow UI starting or not answering (pid $pid): $(url); log $LOG_FILE"
        fi
        return 0
    fi
    echo "MLflow UI on port $MLFLOW_UI_PORT is not running"
    return 3 # LSB "program is not running"
}

run() {
    local mlflow
    mlflow="$(find_mlflow)"
    server_args
    echo "MLflow UI: $(url)  (store $MLFLOW_UI_STORE; Ctrl-C stops it)"
    exec "$mlflow" "${ARGS[@]}"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
run) run ;;
*)
    echo "usage: [MLFLOW_UI_HOST=127.0.0.1] [MLFLOW_UI_PORT=5000] mlflow/serve.sh start|stop|status|run" >&2
    exit 2
    ;;
esac
