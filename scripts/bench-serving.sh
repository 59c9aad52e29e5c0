#!/usr/bin/env bash
# Serving benchmark with one non-tonic load generator for every RPC: h2load
# (Debian's nghttp2-client, installed here if missing) drives batch-1
# Predict of the `dropout` preset and the no-op Health/Check side by side,
# over one HTTP/2 connection with 1, 16 and 64 streams in flight, and prints
# req/s, p50/p99 latency, and the server's RSS and threads (before, the peak
# during each run, after), with the CPU model. Not run in CI.
#   bash scripts/bench-serving.sh              # 10 s a row
#   SECONDS_PER_ROW=3 LSTMD=target/release/lstmd bash scripts/bench-serving.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROW=${SECONDS_PER_ROW:-10}
LSTMD=${LSTMD:-target/release/lstmd}

if ! command -v h2load >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get install -y -q nghttp2-client >/dev/null
fi
[ -x "$LSTMD" ] || cargo build --release --bin lstmd

work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$LSTMD" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
export LSTMD_SERVER="127.0.0.1:$port"
for _ in $(seq 1 100); do
  "$LSTMD" models list >/dev/null 2>&1 && break
  sleep 0.2
done

# The `dropout` preset (vocab 100, window 10), trained for one epoch.
python3 -c 'import struct,sys; sys.stdout.buffer.write(struct.pack("<4000I", *[(i*7)%100 for i in range(4000)]))' >"$work/ids.bin"
"$LSTMD" datasets upload "$work/ids.bin" --name bench --tokenizer ids --vocab-size 100 >/dev/null
"$LSTMD" train --dataset bench --name bench --preset dropout --epochs 1 --batch-size 64 --seed 1 >/dev/null
"$LSTMD" predict --model bench --ids "1,2,3,4,5,6,7,8,9,10" >/dev/null

# Pre-framed gRPC bodies: a 5-byte header (uncompressed, big-endian length)
# and the protobuf message, written by hand (field numbers from the protos).
python3 - "$work" <<'PY'
import struct, sys
def varint(n):
    out = b""
    while True:
        b = n & 0x7F; n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n: return out
def field(num, wire, payload):
    key = varint(num << 3 | wire)
    return key + (varint(len(payload)) + payload if wire == 2 else payload)
ids = b"".join(varint(i) for i in range(1, 11))
sequence = field(1, 2, ids)                       # Sequence.ids (packed)
predict = field(1, 2, b"bench") + field(3, 2, sequence) + field(4, 0, varint(5))
frame = lambda m: b"\0" + struct.pack(">I", len(m)) + m
open(sys.argv[1] + "/predict.bin", "wb").write(frame(predict))
open(sys.argv[1] + "/health.bin", "wb").write(frame(b""))
PY

rss_threads() { awk '/^VmRSS/{r=$2} /^Threads/{t=$2} END{printf "%d %d\n", r/1024, t}' "/proc/$server/status"; }

# One row: h2load for SECONDS_PER_ROW with M streams on one connection, the
# per-request log turned into p50/p99, the server's peak RSS/threads.
row() {
  local label=$1 path=$2 body=$3 streams=$4
  : >"$work/peak"
  ( peak_r=0; peak_t=0
    while kill -0 $server 2>/dev/null && [ ! -e "$work/stop" ]; do
      read -r r t < <(rss_threads); [ "$r" -gt "$peak_r" ] && peak_r=$r; [ "$t" -gt "$peak_t" ] && peak_t=$t
      echo "$peak_r $peak_t" >"$work/peak"; sleep 0.2
    done ) &
  local sampler=$!
  h2load -c 1 -m "$streams" -D "$SECONDS_PER_ROW" --warm-up-time 1 \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$body" \
    --log-file "$work/log" "http://127.0.0.1:$port$path" >"$work/h2load.out"
  touch "$work/stop"; wait $sampler; rm -f "$work/stop"
  python3 - "$work/log" "$work/h2load.out" "$label" "$streams" "$(cat "$work/peak")" <<'PY'
import re, sys
log, out, label, streams, peak = sys.argv[1:6]
lat = sorted(int(l.split()[2]) for l in open(log) if l.strip())
text = open(out).read()
rate = float(re.search(r"finished in [^,]+, ([\d.]+) req/s", text).group(1))
ok = re.search(r"(\d+) succeeded", text).group(1)
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0
rss, threads = peak.split()
print(f"{label:<14} {streams:>4} {rate:>10.0f} {q(0.5):>9} {q(0.99):>9} {rss:>8} {threads:>8} {ok:>9}")
PY
}

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
read -r r t < <(rss_threads); echo "server before: RSS $r MB, $t threads"
printf "%-14s %4s %10s %9s %9s %8s %8s %9s\n" rpc streams "req/s" "p50 us" "p99 us" "RSS MB" threads succeeded
for m in 1 16 64; do
  row "Health/Check" /grpc.health.v1.Health/Check "$work/health.bin" "$m"
  row "Predict b1" /lstmd.v1.PredictionService/Predict "$work/predict.bin" "$m"
done
read -r r t < <(rss_threads); echo "server after: RSS $r MB, $t threads"
