#!/usr/bin/env bash
# README.md, run as written, so it cannot drift from the program.
#
#   bash .ci/readme.sh test    the README's second top command (`cargo test --release`)
#   bash .ci/readme.sh run     its first (`cargo run --release -- serve`), on a
#                              free port through LSTMD_LISTEN (the README says
#                              so), checked healthy over gRPC; then every sh
#                              block that calls grpcurl or lstmd, top to
#                              bottom, against it; then the server is stopped
#                              and must exit cleanly.
#
# The blocks run verbatim in one bash, in a scratch directory (with tests/ and
# examples/ linked in). `grpcurl` and `lstmd` are shell functions there that
# make only the substitutions the README asks of a reader: the address, and
# the `ds-…`, `job-…`, `sess-…` ids earlier answers gave. A `lstmd serve` in a
# block (the TLS example) starts that server on a free port for `localhost`.
#   GRPCURL  the real grpcurl (default: .venv/bin/grpcurl)
# For a quicker check by hand, not in CI: README_SERVER=HOST:PORT runs the
# blocks against a server already running, LSTMD=PATH with that client.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
readme() { python3 "$root/.ci/readme.py" "$@"; }

if [ "${1:-}" = test ]; then
  command=$(readme top 2)
  echo "== README: $command"
  eval "$command"
  exit 0
fi
[ "${1:-}" = run ] || { echo "usage: $0 test|run" >&2; exit 2; }

GRPCURL_BIN=$(realpath "${GRPCURL:-.venv/bin/grpcurl}")
work=$(mktemp -d)
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
servers=()
stop_servers() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap 'stop_servers; rm -rf "$work"' EXIT

# Waits for grpc.health.v1 to answer SERVING (TLS: pass -cacert FILE).
wait_healthy() {
  local addr=$1 pid=$2
  shift 2
  for _ in $(seq 1 300); do
    if "$GRPCURL_BIN" "$@" "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "readme: the server at $addr exited" >&2; return 1; }
    sleep 0.5
  done
  echo "readme: the server at $addr did not become healthy" >&2
  return 1
}

main_server=
if [ -n "${README_SERVER:-}" ]; then
  address=$README_SERVER
else
  # The README's first command, as written. Built first, so that the wait
  # below is for the server, not for the compiler.
  serve_command=$(readme top 1)
  cargo build --release --quiet --bin lstmd
  port=$(free_port)
  address=127.0.0.1:$port
  echo "== README: LSTMD_LISTEN=$address LSTMD_DATA_DIR=… $serve_command"
  LSTMD_LISTEN="$address" LSTMD_DATA_DIR="$work/data" bash -c "exec $serve_command" \
    >"$work/server.log" 2>&1 &
  main_server=$!
  servers+=("$main_server")
  wait_healthy "$address" "$main_server" -plaintext || { cat "$work/server.log" >&2; exit 1; }
  echo "healthy over gRPC at $address"
fi

export README_STATE=$work/ids.json README_ADDR=$address README_TLS_PORT= GRPCURL_BIN
export README_TOOL=$root/.ci/readme.py README_WORK=$work
README_LSTMD=$(realpath -m "${LSTMD:-$root/target/release/lstmd}")
export README_LSTMD

# The substitutions a reader makes, on every argument.
readme_args() {
  local a
  README_ARGS=()
  for a in "$@"; do
    a=${a//127.0.0.1:50051/$README_ADDR}
    if [ -n "$README_TLS_PORT" ]; then a=${a//localhost:50051/localhost:$README_TLS_PORT}; fi
    case $a in *ds-…* | *job-…* | *sess-…*) a=$(python3 "$README_TOOL" subst "$README_STATE" "$a") ;; esac
    README_ARGS+=("$a")
  done
}

grpcurl() {
  local out rc=0
  readme_args "$@"
  out=$(mktemp -p "$README_WORK")
  "$GRPCURL_BIN" "${README_ARGS[@]}" >"$out" || rc=$?
  cat "$out"
  python3 "$README_TOOL" record "$README_STATE" <"$out"
  python3 "$README_TOOL" failed <"$out" || rc=1
  return "$rc"
}

lstmd() {
  readme_args "$@"
  if [ "${README_ARGS[0]:-}" = serve ]; then
    readme_serve "${README_ARGS[@]:1}"
    return
  fi
  LSTMD_SERVER=${LSTMD_SERVER:-$README_ADDR} "$README_LSTMD" "${README_ARGS[@]}"
}
export -f readme_args grpcurl lstmd

# `lstmd serve FLAGS` in a block: a second server with those flags, on a
# free port that `localhost:50051` then stands for.
readme_serve() {
  local tls_port pid
  tls_port=$(free_port)
  "$README_LSTMD" serve "$@" --listen "127.0.0.1:$tls_port" --data-dir "$README_WORK/data-$tls_port" \
    >"$README_WORK/server-$tls_port.log" 2>&1 &
  pid=$!
  servers+=("$pid")
  if [[ " $* " == *" --tls-cert "* ]]; then
    wait_healthy "localhost:$tls_port" "$pid" -cacert "$(tls_ca "$@")"
  else
    wait_healthy "127.0.0.1:$tls_port" "$pid" -plaintext
  fi
  README_TLS_PORT=$tls_port
  echo "(lstmd serve $* runs on port $tls_port)"
}
tls_ca() {
  while [ $# -gt 0 ]; do
    if [ "$1" = --tls-cert ]; then echo "$2"; return; fi
    shift
  done
}

scratch=$work/scratch
mkdir -p "$scratch"
ln -s "$root/tests" "$root/examples" "$scratch/"
cd "$scratch"
readme blocks >"$work/blocks.sh"
# Each block as a reader pastes it: stop at the first failing command.
set +o pipefail
# shellcheck disable=SC1091
source "$work/blocks.sh"
set -o pipefail
cd "$root"
[ -n "$main_server" ] || { echo "README blocks ran as written"; exit 0; }

echo "== README: stopping the server (SIGTERM)"
kill -TERM "$main_server"
status=0
wait "$main_server" || status=$?
servers=("${servers[@]/$main_server/}")
[ "$status" = 0 ] || { cat "$work/server.log" >&2; echo "readme: the server exited with $status" >&2; exit 1; }
echo "README ran as written"
