#!/usr/bin/env bash
# Soak test (README "Testing"): `llamabus serve` with SmolLM2 against a local mosquitto under
# steady load for MINUTES (default 10). Every SAMPLE_S seconds it records the daemon's resident
# memory (VmRSS) and open file descriptors; at the end it prints the least-squares slope of
# each over the run (the first WARMUP_S seconds left out, while caches and pools fill) and
# fails when a slope is above its limit, or when a request went unanswered.
#
# The duplicate window (README "Delivery guarantees") holds every answer for dedup_window_s, so
# RSS rises until the window is full and entries expire as fast as they arrive; the soak sets a
# short window (DEDUP_WINDOW_S, 120 s) and leaves it, plus a minute, out as warm-up.
#
#   scripts/soak.sh [MINUTES]
#   env: RATE (requests per second, default 1), SAMPLE_S (5), DEDUP_WINDOW_S (120),
#        WARMUP_S (DEDUP_WINDOW_S + 60),
#        MAX_RSS_SLOPE_KB (KiB per minute, default 256), MAX_FD_SLOPE (fds per minute, 0.05),
#        LLAMABUS (binary; default target/release/llamabus, built if missing), KEEP=1 keeps
#        the working directory with the samples (samples.csv: seconds,rss_kib,fds).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
RATE=${RATE:-1}
SAMPLE_S=${SAMPLE_S:-5}
DEDUP_WINDOW_S=${DEDUP_WINDOW_S:-120}
WARMUP_S=${WARMUP_S:-$((DEDUP_WINDOW_S + 60))}
MAX_RSS_SLOPE_KB=${MAX_RSS_SLOPE_KB:-256}
MAX_FD_SLOPE=${MAX_FD_SLOPE:-0.05}
BIN=${LLAMABUS:-target/release/llamabus}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf

[ -f "$MODEL" ] || scripts/fetch-test-data.sh
[ -x "$BIN" ] || cargo build --release --quiet

work=$(mktemp -d /tmp/llamabus-soak.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = "1" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$work/mosquitto.conf"
/usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)

cat >"$work/llamabus.toml" <<EOF
[node]
name = "soak"
[mqtt]
broker = "mqtt://127.0.0.1:$port"
dedup_window_s = $DEDUP_WINDOW_S
[limits]
queue_capacity = 8
default_max_tokens = 16
max_prompt_tokens = 256
[model]
path = "$PWD/$MODEL"
threads = 1
context = 1024
[log]
level = "warn"
EOF
"$BIN" serve --config "$work/llamabus.toml" 2>"$work/serve.log" &
serve=$!
pids+=($serve)

# Wait for the daemon's online status (this also waits for the broker to listen).
for _ in $(seq 300); do
  mosquitto_sub -p "$port" -t llamabus/status/soak -C 1 -W 1 2>/dev/null | grep -q '"online"' && break
  kill -0 "$serve" 2>/dev/null || { cat "$work/serve.log"; echo "soak: serve exited" >&2; exit 1; }
done

# Replies (one line each: mosquitto_sub prints the payload). Started only once the broker is
# known to listen (a subscriber started earlier can meet "connection refused" and exit), and
# proven subscribed by a probe it must print before any request is sent.
stdbuf -oL mosquitto_sub -p "$port" -q 1 -t 'llamabus/reply/soak' </dev/null >"$work/replies" 2>"$work/sub.log" &
sub=$!
pids+=($sub)
for _ in $(seq 100); do
  mosquitto_pub -p "$port" -t llamabus/reply/soak -m soak-probe 2>/dev/null || true
  grep -q soak-probe "$work/replies" && break
  kill -0 "$sub" 2>/dev/null || { cat "$work/sub.log"; echo "soak: reply subscriber exited" >&2; exit 1; }
  sleep 0.2
done
grep -q soak-probe "$work/replies" || { echo "soak: reply subscriber never received its probe" >&2; exit 1; }

# Steady load: RATE JSON requests a second, each with its own id and seed, 16 tokens.
(
  i=0
  while :; do
    for _ in $(seq "$RATE"); do
      i=$((i + 1))
      # Count only requests the broker took (QoS 1: mosquitto_pub exits 0 after the PUBACK).
      if mosquitto_pub -p "$port" -q 1 -t llamabus/prompt/soak </dev/null 2>>"$work/pub.log" \
        -m "{\"id\":\"s$i\",\"prompt\":\"Tell me about the number $i.\",\"max_tokens\":16,\"seed\":$i}"; then
        echo "$i" >>"$work/sent"
      else
        echo "$i" >>"$work/pub-failed"
      fi
    done
    sleep 1
  done
) &
load=$!
pids+=($load)

echo "soak: $MINUTES min, $RATE req/s, sampling every $SAMPLE_S s (pid $serve, port $port)"
echo "seconds,rss_kib,fds" >"$work/samples.csv"
t0=$(date +%s)
end=$((t0 + MINUTES * 60))
while [ "$(date +%s)" -lt "$end" ]; do
  kill -0 "$serve" 2>/dev/null || { tail -20 "$work/serve.log"; echo "soak: serve died" >&2; exit 1; }
  kill -0 "$sub" 2>/dev/null || { cat "$work/sub.log"; echo "soak: reply subscriber died" >&2; exit 1; }
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$serve/status")
  fds=$(ls "/proc/$serve/fd" | wc -l)
  echo "$(( $(date +%s) - t0 )),$rss,$fds" >>"$work/samples.csv"
  sleep "$SAMPLE_S"
done
kill "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true
sent=$(wc -l <"$work/sent")
pub_failed=0
[ -f "$work/pub-failed" ] && pub_failed=$(wc -l <"$work/pub-failed")
# Let the queue drain, then count the final replies (the non-error JSON replies).
for _ in $(seq 60); do
  [ "$(grep -c '"finish_reason"' "$work/replies" || true)" -ge "$sent" ] && break
  sleep 1
done
answered=$(grep -c '"finish_reason"' "$work/replies" || true)
refused=$(grep -c '"error"' "$work/replies" || true)
# An id answered more than once would be a duplicate generation (each request has its own id).
duplicated=$(grep -o '"id":"s[0-9]*","model"' "$work/replies" | sort | uniq -d | wc -l || true)
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$serve/status")

# Least squares over the samples after the warm-up: slope per minute of RSS (KiB) and fds.
read -r n rss_slope fd_slope rss_first rss_last fd_first fd_last < <(awk -F, -v w="$WARMUP_S" '
  NR > 1 && $1 >= w { n++; x = $1 / 60; sx += x; sxx += x * x; sr += $2; sxr += x * $2; sf += $3; sxf += x * $3
                      if (n == 1) { r0 = $2; f0 = $3 } r1 = $2; f1 = $3 }
  END { d = n * sxx - sx * sx; if (n < 3 || d == 0) { print n, 0, 0, 0, 0, 0, 0; exit }
        printf "%d %.1f %.3f %d %d %d %d\n", n, (n * sxr - sx * sr) / d, (n * sxf - sx * sf) / d, r0, r1, f0, f1 }' \
  "$work/samples.csv")
echo "soak: $sent requests sent, $answered answered, $refused refused (errors), $(( sent - answered - refused )) without reply, $duplicated duplicated, $pub_failed not accepted by the broker"
echo "soak: RSS ${rss_first} -> ${rss_last} KiB (peak VmHWM ${hwm} KiB), slope ${rss_slope} KiB/min over $n samples"
echo "soak: fds ${fd_first} -> ${fd_last}, slope ${fd_slope} /min"
fail=0
awk -v s="$rss_slope" -v m="$MAX_RSS_SLOPE_KB" 'BEGIN { exit !(s > m) }' \
  && { echo "soak: RSS grows faster than $MAX_RSS_SLOPE_KB KiB/min" >&2; fail=1; }
awk -v s="$fd_slope" -v m="$MAX_FD_SLOPE" 'BEGIN { exit !(s > m) }' \
  && { echo "soak: open fds grow faster than $MAX_FD_SLOPE /min" >&2; fail=1; }
[ $(( answered + refused )) -ge "$sent" ] || { echo "soak: $(( sent - answered - refused )) requests got no reply" >&2; fail=1; }
[ "$n" -ge 3 ] || { echo "soak: too few samples after the warm-up; run longer" >&2; fail=1; }
[ "$duplicated" -eq 0 ] || { echo "soak: $duplicated ids were answered twice" >&2; fail=1; }
[ "$pub_failed" -eq 0 ] || { echo "soak: the broker refused $pub_failed publishes (see pub.log)" >&2; fail=1; }
grep -q panicked "$work/serve.log" && { echo "soak: the daemon panicked" >&2; fail=1; }
exit $fail
