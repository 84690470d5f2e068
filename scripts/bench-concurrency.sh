#!/usr/bin/env bash
# Many devices at once: aggregate generated tokens/s and p50/p95 time-to-first-token with 1, 2,
# 4 and 8 concurrent clients, llamabus (MQTT, `llamabus serve`) against llama.cpp's
# `llama-server -np 4` (HTTP, /v1/chat/completions), same model, same threads, same machine,
# alternating in one run. Prints figures; asserts nothing.
#
#   scripts/bench-concurrency.sh
# Environment:
#   THREADS=2  TOKENS=64  REQS=4 (requests per client, back to back)  LEVELS="1 2 4 8"
#   PARALLEL=8 (llamabus slots; "default" runs llamabus with its default [model] settings:
#   only threads set)  NP=4 (llama-server slots)  CONTEXT=1024 (per slot, both)
#   MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf  LLAMACPP_BIN=folder with a built llama-server
#   ROUNDS=2 (alternating rounds: llamabus, llama-server, llamabus, ...; figures pooled)
#   PREFIX_CACHE=1: also run llamabus with the prefix cache off, for the TTFT comparison
#   SCRATCH=/tmp/llamabus-vs-llamacpp (llama.cpp source and build, OUTSIDE the repo)
#
# Each client asks a different question (so answers differ) in the model's chat template, greedy,
# max 64 new tokens; both servers see the same prompts in the same order. TTFT is measured by the
# client: from sending the request to the first streamed text. Aggregate tokens/s is all
# generated tokens of a level divided by its wall time (first request sent to last answer).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

THREADS=${THREADS:-2}
TOKENS=${TOKENS:-64}
REQS=${REQS:-4}
LEVELS=${LEVELS:-"1 2 4 8"}
PARALLEL=${PARALLEL:-8}
NP=${NP:-4}
CONTEXT=${CONTEXT:-1024}
ROUNDS=${ROUNDS:-2}
ONLY=${ONLY:-}
PREFIX_CACHE=${PREFIX_CACHE:-1}
scratch=${SCRATCH:-/tmp/llamabus-vs-llamacpp}
MODEL=${MODEL:-$repo/models/SmolLM2-135M-Instruct.Q4_1.gguf}
case "$scratch" in "$repo"/*) echo "SCRATCH must be outside the repo" >&2; exit 2 ;; esac

# --- llama-server from llama-cpp-python 0.3.36's vendor/llama.cpp ---------------------------
build=$scratch/build
LS=${LLAMACPP_BIN:+$LLAMACPP_BIN/llama-server}
origin="prebuilt $LLAMACPP_BIN"
if [ -z "$LS" ]; then
    LS=$build/bin/llama-server
    origin="llama-cpp-python 0.3.36's vendor tree"
fi
if [ ! -x "$LS" ] && [ -n "${LLAMACPP_BIN:-}" ]; then
    echo "no llama-server in LLAMACPP_BIN=$LLAMACPP_BIN" >&2; exit 2
fi
if [ ! -x "$LS" ]; then
    src=${LLAMACPP_SRC:-$scratch/src/llama_cpp_python-0.3.36/vendor/llama.cpp}
    if [ ! -f "$src/CMakeLists.txt" ]; then
        mkdir -p "$scratch/dl" "$scratch/src"
        pip download --no-binary :all: --no-deps -d "$scratch/dl" llama-cpp-python==0.3.36
        tar -xzf "$scratch/dl/llama_cpp_python-0.3.36.tar.gz" -C "$scratch/src"
    fi
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
        -DGGML_METAL=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF >"$scratch/cmake-server.log"
    cmake --build "$build" -j"$(nproc)" --target llama-server >"$scratch/build-server.log"
fi


# --- llamabus ----------------------------------------------------------------------------------
[ -f "$MODEL" ] || scripts/fetch-test-data.sh
command -v mosquitto >/dev/null || PATH="$PATH:/usr/sbin"
RUSTFLAGS="-C target-cpu=native" cargo build --release --quiet
LB=$repo/target/release/llamabus

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mport=$(free_port)
hport=
lb_pid=
ls_pid=
pids=()
cleanup() {
    for p in $lb_pid $ls_pid "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n' \
    "$mport" >"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 &
pids+=($!)

# Starts `llamabus serve` (prefix cache on or off) and waits for the retained "online" status.
start_llamabus() {
    cat >"$work/llamabus.toml" <<EOF
[node]
name = "bench"
[limits]
queue_capacity = 64
max_prompt_tokens = 256
[model]
threads = $THREADS
prefix_cache = $1
EOF
    if [ "$PARALLEL" != default ]; then
        printf 'context = %s\nparallel = %s\n' "$CONTEXT" "$PARALLEL" >>"$work/llamabus.toml"
    fi
    LLAMABUS_LOG=warn "$LB" serve --config "$work/llamabus.toml" \
        --model "$MODEL" --broker "mqtt://127.0.0.1:$mport" &
    lb_pid=$!
    for _ in $(seq 120); do
        s=$(mosquitto_sub -p "$mport" -t llamabus/status/bench -C 1 -W 1 2>/dev/null || true)
        case "$s" in *'"online"'*) return 0 ;; esac
    done
    echo "llamabus did not come online" >&2
    exit 1
}
stop_llamabus() { kill "$lb_pid"; wait "$lb_pid" 2>/dev/null || true; }

start_llama_server() {
    # Picked late: `ask` clients' ephemeral ports must not have taken it meanwhile.
    hport=$(free_port)
    "$LS" -m "$MODEL" -t "$THREADS" -tb "$THREADS" -np "$NP" -c $((CONTEXT * NP)) \
        --host 127.0.0.1 --port "$hport" --no-webui >"$work/llama-server.log" 2>&1 &
    ls_pid=$!
    for _ in $(seq 120); do
        curl -sf "http://127.0.0.1:$hport/health" >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "llama-server did not come up" >&2
    exit 1
}
stop_llama_server() {
    kill "$ls_pid" 2>/dev/null || true
    wait "$ls_pid" 2>/dev/null || true
    cp "$work/llama-server.log" "$scratch/llama-server-last.log"
}

# One level: N clients, REQS requests each. Writes "tool N wall_s tokens ttft_ms..." lines.
run_level() {
    local tool=$1 n=$2 out=$3
    python3 - "$tool" "$n" "$REQS" "$TOKENS" "$LB" "$mport" "$hport" >>"$out" <<'EOF'
import json, re, subprocess, sys, threading, time, http.client
tool, n, reqs, tokens, lb, mport, hport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
topics = ["the sea", "a mountain", "a robot", "the moon", "a garden", "a city at night", "a train", "the forest",
          "a lighthouse", "winter", "a river", "the desert", "a library", "a storm", "a bakery", "a volcano"]
def prompt(c, r):
    return f"Write a long, detailed story about {topics[(c * reqs + r) % len(topics)]}."
ttfts, toks, lock = [], [], threading.Lock()
def ask_mqtt(c, r):
    p = subprocess.run([lb, "ask", "--broker", f"mqtt://127.0.0.1:{mport}", "--device", f"dev{c}",
                        "--stream", "--temperature", "0", "--max-tokens", str(tokens), "--timings",
                        prompt(c, r)], capture_output=True, text=True, timeout=600)
    m = re.search(r"publish->first token ([0-9.]+) ms, .*?, (\d+) tokens", p.stderr)
    if not m:
        raise SystemExit(f"ask failed: {p.stderr}")
    return float(m.group(1)), int(m.group(2))
def ask_http(c, r):
    body = json.dumps({"messages": [{"role": "user", "content": prompt(c, r)}], "max_tokens": tokens,
                       "temperature": 0, "stream": True, "cache_prompt": True})
    conn = http.client.HTTPConnection("127.0.0.1", int(hport), timeout=600)
    t0 = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first, n = None, 0
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        d = json.loads(line[6:])
        for ch in d.get("choices", []):
            if ch.get("delta", {}).get("content"):
                if first is None:
                    first = time.monotonic()
        if d.get("usage"):
            n = d["usage"]["completion_tokens"]
        if "timings" in d:
            n = d["timings"].get("predicted_n", n)
    conn.close()
    return (first - t0) * 1e3, n
ask = ask_http if tool == "llama-server" else ask_mqtt
def client(c):
    for r in range(reqs):
        t, k = ask(c, r)
        with lock:
            ttfts.append(t); toks.append(k)
t0 = time.monotonic()
ts = [threading.Thread(target=client, args=(c,)) for c in range(n)]
for t in ts: t.start()
for t in ts: t.join()
wall = time.monotonic() - t0
print(tool, n, f"{wall:.3f}", sum(toks), " ".join(f"{t:.1f}" for t in ttfts))
EOF
}

results=$work/results.txt
: >"$results"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cpus"
echo "llamabus $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty) parallel=$PARALLEL; llama-server -np $NP ($origin)"
echo "model $(basename "$MODEL"), $THREADS threads, $TOKENS-token greedy answers, $REQS requests per client, context $CONTEXT per slot"
for round in $(seq "$ROUNDS"); do
    echo "round $round: load $(cut -d' ' -f1-3 /proc/loadavg)"
    if [ "$ONLY" != llama-server ]; then
        start_llamabus true
        for n in $LEVELS; do run_level llamabus "$n" "$results"; done
        stop_llamabus
    fi
    start_llama_server
    for n in $LEVELS; do run_level llama-server "$n" "$results"; done
    stop_llama_server
    if [ "$PREFIX_CACHE" = 1 ] && [ "$ONLY" != llama-server ]; then
        start_llamabus false
        for n in $LEVELS; do run_level "llamabus-nocache" "$n" "$results"; done
        stop_llamabus
    fi
done
echo "after: load $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$results" <<'EOF'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    tool, n, wall, toks, ttft = f[0], int(f[1]), float(f[2]), int(f[3]), [float(x) for x in f[4:]]
    r = rows.setdefault((tool, n), {"wall": 0.0, "toks": 0, "ttft": []})
    r["wall"] += wall; r["toks"] += toks; r["ttft"] += ttft
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
tools = [t for t in ("llamabus", "llama-server", "llamabus-nocache") if any(k[0] == t for k in rows)]
levels = sorted({k[1] for k in rows})
print()
print("| clients | " + " | ".join(f"{t} tok/s | {t} TTFT p50 / p95 ms" for t in tools) + " |")
print("|---|" + "---|---|" * len(tools))
agg = {}
for n in levels:
    cells = []
    for t in tools:
        r = rows.get((t, n))
        if not r:
            cells += ["", ""]; continue
        tps = r["toks"] / r["wall"]; agg[(t, n)] = (tps, pct(r["ttft"], 50), pct(r["ttft"], 95))
        cells += [f"{tps:.1f}", f"{pct(r['ttft'], 50):.0f} / {pct(r['ttft'], 95):.0f}"]
    print(f"| {n} | " + " | ".join(cells) + " |")
print()
lo, hi = levels[0], levels[-1]
if ("llamabus", lo) in agg and ("llamabus", hi) in agg:
    s, m = agg[("llamabus", lo)], agg[("llamabus", hi)]
    print(f"llamabus {hi}-client aggregate / {lo}-client: {m[0] / s[0]:.2f}x (target >= 2.5x)")
    print(f"llamabus {hi}-client p95 TTFT / {lo}-client p95: {m[2] / s[2]:.2f}x (target <= 4x)")
for n in levels:
    if ("llamabus", n) in agg and ("llama-server", n) in agg:
        print(f"{n} clients: llamabus / llama-server throughput {agg[('llamabus', n)][0] / agg[('llama-server', n)][0]:.2f}x (target >= 1)")
for n in levels:
    if ("llamabus", n) in agg and ("llamabus-nocache", n) in agg:
        print(f"{n} clients: TTFT p50 with prefix cache {agg[('llamabus', n)][1]:.0f} ms, without {agg[('llamabus-nocache', n)][1]:.0f} ms")
EOF
