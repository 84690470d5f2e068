#!/usr/bin/env bash
# MQTT overhead of llamabus: the same greedy 32-token chat answer asked over a real local
# mosquitto (`llamabus ask --stream --timings` against `llamabus serve`) and generated in-process
# (`llamabus complete --chat`), alternating, N rounds. Prints per-round figures and medians.
#
#   scripts/bench-mqtt.sh [ROUNDS=10] [THREADS=2]
#
# "publish->first/last token" is measured by the client from its PUBLISH to the first streamed
# text and to the final reply; `complete` measures from the start of prompt evaluation to the
# first and last text it prints (model load excluded on both sides). "outside the engine" is
# the client's end-to-end time minus the daemon's own queue + prompt + generation time.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-10}
THREADS=${2:-2}
TOKENS=32
PROMPT="Write a short poem about the sea."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf

[ -f "$MODEL" ] || scripts/fetch-test-data.sh
command -v mosquitto >/dev/null || PATH="$PATH:/usr/sbin"
RUSTFLAGS="-C target-cpu=native" cargo build --release --quiet
BIN=target/release/llamabus

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  [ -n "${serve_pid:-}" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  [ -n "${mosq_pid:-}" ] && kill "$mosq_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 &
mosq_pid=$!
cat >"$work/llamabus.toml" <<EOF
[node]
name = "bench"
[model]
threads = $THREADS
context = 2048
EOF
LLAMABUS_LOG=warn $BIN serve --config "$work/llamabus.toml" --model "$MODEL" \
  --broker "mqtt://127.0.0.1:$port" &
serve_pid=$!
# Ready when the retained status says online.
for _ in $(seq 120); do
  s=$(mosquitto_sub -p "$port" -t llamabus/status/bench -C 1 -W 1 2>/dev/null || true)
  case "$s" in *'"online"'*) break ;; esac
done
case "$s" in *'"online"'*) ;; *) echo "daemon did not come online" >&2; exit 1 ;; esac

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty); threads $THREADS; $TOKENS tokens; prompt: $PROMPT"
for i in $(seq "$ROUNDS"); do
  $BIN ask --broker "mqtt://127.0.0.1:$port" --stream --temperature 0 --max-tokens "$TOKENS" \
    --timings "$PROMPT" 2>>"$work/ask.txt" >/dev/null
  $BIN complete --model "$MODEL" --chat --temperature 0 --max-tokens "$TOKENS" \
    --threads "$THREADS" "$PROMPT" 2>>"$work/complete.txt" >/dev/null
done

python3 - "$work/ask.txt" "$work/complete.txt" <<'EOF'
import re, statistics, sys
num = r"([0-9.]+)"
ask = [l for l in open(sys.argv[1]) if l.startswith("timings:")]
com = [l for l in open(sys.argv[2]) if "first token" in l]
def grab(lines, pat):
    return [float(re.search(pat, l).group(1)) for l in lines]
a_first = grab(ask, r"publish->first token " + num)
a_last = grab(ask, r"publish->last token " + num)
a_out = grab(ask, r"outside the engine " + num)
a_tok = grab(ask, r", (\d+) tokens")
c_first = grab(com, r"first token " + num)
c_last = grab(com, r"last token " + num)
c_tok = grab(com, r"generated (\d+) tokens")
for i in range(min(len(a_last), len(c_last))):
    print(f"round {i+1}: mqtt first {a_first[i]:7.1f} ms last {a_last[i]:7.1f} ms "
          f"(outside engine {a_out[i]:5.1f} ms) | in-process first {c_first[i]:7.1f} ms last {c_last[i]:7.1f} ms")
med = statistics.median
print(f"tokens: mqtt {sorted(set(a_tok))}, in-process {sorted(set(c_tok))}")
print(f"median publish->first token {med(a_first):.1f} ms vs in-process {med(c_first):.1f} ms")
print(f"median publish->last token  {med(a_last):.1f} ms vs in-process {med(c_last):.1f} ms "
      f"(ratio {med(a_last)/med(c_last):.3f})")
print(f"median time outside the engine {med(a_out):.1f} ms = {100*med(a_out)/med(a_last):.1f}% of end-to-end")
EOF
