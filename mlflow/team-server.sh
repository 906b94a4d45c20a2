#!/usr/bin/env bash
# The team's MLflow tracking server: runs, params, metrics and tags in PostgreSQL;
# artifacts stored by the server itself (--serve-artifacts, mlflow-artifacts:/ URIs), so
# the Ray nodes that log to it need HTTP access to it and nothing else: no shared
# filesystem, no bucket credentials. How to set it up: mlflow/README.md, "Team server".
#
#   STORE_URI=postgresql://mlflow@DBHOST:5432/mlflow ARTIFACTS=/srv/mlflow-artifacts \
#       mlflow/team-server.sh [extra `mlflow server` flags]
#
# Runs in the foreground (Ctrl-C, or SIGTERM to its process group, stops it and its
# workers). Settings are environment variables:
#   STORE_URI   required  postgresql://USER@HOST:PORT/DB; keep the password out of it:
#                         ~/.pgpass or PGPASSWORD (libpq reads both)
#   ARTIFACTS   required  a folder on this machine, or a bucket URI (s3://, gs://...)
#   HOST        127.0.0.1 the interface to bind; anything else needs AUTH=basic
#   PORT        5000
#   WORKERS     2         uvicorn worker processes
#   AUTH        none      basic: MLflow's built-in users and permissions (--app-name
#                         basic-auth); needs MLFLOW_FLASK_SERVER_SECRET_KEY, and
#                         MLFLOW_AUTH_ADMIN_PASSWORD the first time
#   AUTH_DB_URI STORE_URI where the users and permissions live
#   AUTH_CACHE_TTL 60     seconds a checked password stays valid per worker (0: none)
#   STATE_DIR   mlflow/   where the generated auth config (team-auth.ini) goes
#   MLFLOW      .venv/bin/mlflow, else `mlflow` on PATH
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-5000}"
WORKERS="${WORKERS:-2}"
AUTH="${AUTH:-none}"
STATE_DIR="${STATE_DIR:-$ROOT/mlflow}"

die() {
    echo "team-server.sh: $*" >&2
    exit 2
}

[[ -n "${STORE_URI:-}" ]] ||
    die "set STORE_URI=postgresql://USER@DBHOST:5432/DB (password in ~/.pgpass or PGPASSWORD)"
[[ "$STORE_URI" == postgresql://* || "$STORE_URI" == postgresql+*://* ]] ||
    die "STORE_URI must be a postgresql:// URI, got ${STORE_URI%%:*}:..."
[[ -n "${ARTIFACTS:-}" ]] ||
    die "set ARTIFACTS to a folder on this machine or a bucket URI (s3://BUCKET/PATH)"
[[ "$AUTH" == none || "$AUTH" == basic ]] || die "AUTH must be none or basic, got $AUTH"

if [[ -z "${MLFLOW:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/mlflow" ]]; then
        MLFLOW="$ROOT/.venv/bin/mlflow"
    else
        MLFLOW="$(command -v mlflow)" || die "no mlflow: run 'make test' once, or set MLFLOW"
    fi
fi
# SQLAlchemy 2.1 maps postgresql:// to psycopg (3): a project dependency.
PYTHON="$(dirname "$MLFLOW")/python"
if [[ -x "$PYTHON" ]] && ! "$PYTHON" -c "import psycopg" 2>/dev/null; then
    die "the PostgreSQL driver is missing: $PYTHON -m pip install 'psycopg[binary]'"
fi

case "$HOST" in
127.* | localhost | ::1) ;;
*)
    # MLflow without auth lets anyone who reaches the port read, change and delete runs.
    [[ "$AUTH" == basic || "${ALLOW_NO_AUTH:-0}" == 1 ]] ||
        die "HOST=$HOST is reachable from other machines: set AUTH=basic (and put TLS in front), or ALLOW_NO_AUTH=1 when a proxy already authenticates"
    ;;
esac

if [[ "$ARTIFACTS" != *://* ]]; then
    mkdir -p "$ARTIFACTS"
    ARTIFACTS="$(cd "$ARTIFACTS" && pwd)"
fi

# Through the environment, not argv: `ps` shows argv to every user of the machine.
export MLFLOW_BACKEND_STORE_URI="$STORE_URI"
export MLFLOW_ARTIFACTS_DESTINATION="$ARTIFACTS"
# The GenAI job runner starts eight more processes; experiment tracking does not use it.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

args=(server --host "$HOST" --port "$PORT" --workers "$WORKERS" --serve-artifacts)
if [[ "$AUTH" == basic ]]; then
    [[ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]] ||
        die "AUTH=basic needs MLFLOW_FLASK_SERVER_SECRET_KEY (e.g. openssl rand -hex 32; keep it across restarts)"
    if [[ -x "$PYTHON" ]] && ! "$PYTHON" -c "import flask_wtf" 2>/dev/null; then
        die "AUTH=basic needs MLflow's auth extra: $PYTHON -m pip install 'mlflow[auth]'"
    fi
    mkdir -p "$STATE_DIR"
    export MLFLOW_AUTH_CONFIG_PATH="$STATE_DIR/team-auth.ini"
    (
        umask 077
        cat >"$MLFLOW_AUTH_CONFIG_PATH" <<EOF
# Written by mlflow/team-server.sh; see mlflow/README.md, "Team server".
[mlflow]
# What a signed-in user may do with experiments they neither created nor were granted.
default_permission = ${AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${AUTH_DB_URI:-$STORE_URI}
admin_username = ${AUTH_ADMIN:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Without a cache every request re-hashes the password (PBKDF2): slow for sweeps that log
# from many trials. A changed password may still work for this many seconds.
auth_cache_ttl_seconds = ${AUTH_CACHE_TTL:-60}
EOF
    )
    args+=(--app-name basic-auth)
fi

where="${STORE_URI#*://}"
echo "MLflow team server: http://$HOST:$PORT (store ${STORE_URI%%://*}://${where##*@}," \
    "artifacts $ARTIFACTS, auth $AUTH)"
exec "$MLFLOW" "${args[@]}" "$@"
