#!/usr/bin/env bash
# Side-by-side benchmark: llamabus vs llama.cpp's llama-bench on the same model, same threads,
# alternating runs, in one invocation. Prints both tools' figures and the ratios.
#
# llama.cpp is built from the PyPI source package llama-cpp-python==0.3.36 (its vendor/llama.cpp
# is a complete llama.cpp with tools, ggml 0.25.3) in a scratch directory OUTSIDE the repo.
# Never commit llama.cpp or anything built from it.
#
# Usage: scripts/bench-vs-llamacpp.sh [MODEL]
# Environment:
#   THREADS=1,2        thread counts to compare
#   REPS=5             repetitions inside each tool run (mean ± stddev)
#   ROUNDS=3           alternating rounds (llamabus, llama.cpp, llamabus, ...); figures are pooled
#   TESTS="pp512 tg128"  (also ppN+tgM, llama-bench's -pg)
#   SCRATCH=/tmp/llamabus-vs-llamacpp   where llama.cpp is downloaded and built
#   LLAMACPP_SRC=...   an already unpacked llama.cpp source tree (skips the download)
#   LLAMACPP_BIN=...   a folder with already built llama-bench and llama-completion (skips the build)
#   REPACK=1           weight repacking in both tools (llamabus --repack, llama-bench --repack,
#                      llama-completion --no-repack when 0)
#   COLD=1             also compare cold start (process start -> first token) and peak RSS
#   CTX=2048           context for the cold-start runs (same for both tools)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-$repo/models/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${THREADS:-1,2}
reps=${REPS:-5}
rounds=${ROUNDS:-3}
tests=${TESTS:-"pp512 tg128"}
scratch=${SCRATCH:-/tmp/llamabus-vs-llamacpp}
cold=${COLD:-1}
repack=${REPACK:-1}
mkdir -p "$scratch"

case "$scratch" in "$repo"/*) echo "SCRATCH must be outside the repo" >&2; exit 2 ;; esac

# --- llama.cpp -------------------------------------------------------------------------------
src=${LLAMACPP_SRC:-}
if [ -n "${LLAMACPP_BIN:-}" ]; then
    src="(prebuilt) $LLAMACPP_BIN"
elif [ -z "$src" ]; then
    src=$scratch/src/llama_cpp_python-0.3.36/vendor/llama.cpp
    if [ ! -f "$src/CMakeLists.txt" ]; then
        mkdir -p "$scratch/dl" "$scratch/src"
        pip download --no-binary :all: --no-deps -d "$scratch/dl" llama-cpp-python==0.3.36
        tar -xzf "$scratch/dl/llama_cpp_python-0.3.36.tar.gz" -C "$scratch/src"
    fi
fi
build=$scratch/build
if [ -n "${LLAMACPP_BIN:-}" ]; then
    mkdir -p "$scratch/prebuilt"
    ln -sfn "$LLAMACPP_BIN" "$scratch/prebuilt/bin"
    build=$scratch/prebuilt
elif [ ! -x "$build/bin/llama-bench" ] || [ ! -x "$build/bin/llama-completion" ]; then
    # CPU only, native ISA: the same ISA our build gets from RUSTFLAGS="-C target-cpu=native".
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON \
        -DGGML_METAL=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF >"$scratch/cmake.log"
    cmake --build "$build" -j"$(nproc)" --target llama-bench llama-completion >"$scratch/build.log"
fi
lcb=$build/bin/llama-bench
lcc=$build/bin/llama-completion

# --- llamabus --------------------------------------------------------------------------------
export RUSTFLAGS=${RUSTFLAGS:-"-C target-cpu=native"}
(cd "$repo" && cargo build --release --quiet)
lb=$repo/target/release/llamabus

# --- alternating runs ------------------------------------------------------------------------
out=$scratch/results
rm -rf "$out"; mkdir -p "$out"
pflags=(); gflags=(); lb_pg=(--n-pg 0,0); lc_pg=()
for t in $tests; do
    case $t in
        pp*+tg*) x=${t#pp}; lb_pg+=(--n-pg "${x%+tg*},${x#*+tg}"); lc_pg+=(-pg "${x%+tg*},${x#*+tg}") ;;
        pp*) pflags+=("${t#pp}") ;;
        tg*) gflags+=("${t#tg}") ;;
    esac
done
join() { local IFS=,; echo "$*"; }
p=$(join "${pflags[@]:-0}"); g=$(join "${gflags[@]:-0}")

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus"
echo "llamabus $(cd "$repo" && git rev-parse --short HEAD), llama.cpp from $src"
echo "model: $model; threads $threads; $reps reps x $rounds rounds; repack $repack"
echo "SIMD: $("$lb" sysinfo | grep -E '^(compiled SIMD|ggml reports)' | tr -s ' ' | paste -sd';')"
for r in $(seq 1 "$rounds"); do
    echo "round $r: load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    "$lb" bench --model "$model" -p "$p" -n "$g" "${lb_pg[@]}" -t "$threads" -r "$reps" --json \
        --repack "$repack" >"$out/llamabus.$r.json"
    "$lcb" -m "$model" -p "$p" -n "$g" "${lc_pg[@]}" -t "$threads" -r "$reps" -o json \
        --repack "$repack" >"$out/llamacpp.$r.json" 2>/dev/null
done

# --- cold start and peak RSS -----------------------------------------------------------------
if [ "$cold" = 1 ]; then
    # Same context for both (the KV cache is most of the non-weight memory), one thread.
    prompt="The capital of France is"
    ctx=${CTX:-2048}
    cold_threads=${COLD_THREADS:-1}
    for r in $(seq 1 "$rounds"); do
        for tool in llamabus llamacpp; do
            if [ $tool = llamabus ]; then
                cmd=("$lb" complete --model "$model" --max-tokens 1 --temperature 0 --threads "$cold_threads" --ctx "$ctx" "$prompt")
                [ "$repack" = 1 ] || cmd+=(--no-repack)
            else
                cmd=("$lcc" -m "$model" -p "$prompt" -n 1 -t "$cold_threads" --temp 0 -no-cnv --no-warmup -c "$ctx")
                [ "$repack" = 1 ] || cmd+=(--no-repack)
            fi
            /usr/bin/time -f "%e %M" -o "$out/cold.$tool.$r" "${cmd[@]}" >/dev/null 2>&1 </dev/null
        done
    done
fi

python3 - "$out" "$rounds" "$cold" <<'EOF'
import json, statistics as st, sys, glob
out, rounds, cold = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
def load(tool):
    rows = {}
    for f in sorted(glob.glob(f"{out}/{tool}.*.json")):
        for o in json.load(open(f)):
            key = (f"pp{o['n_prompt']}" if o["n_gen"] == 0 else f"tg{o['n_gen']}" if o["n_prompt"] == 0
                   else f"pp{o['n_prompt']}+tg{o['n_gen']}", o["n_threads"])
            rows.setdefault(key, []).extend(o["samples_ts"])
    return rows
lb, lc = load("llamabus"), load("llamacpp")
print(f"{'test':<12}{'threads':>8}{'llamabus t/s':>22}{'llama.cpp t/s':>22}{'ratio':>8}")
for key in sorted(lb, key=lambda k: (k[1], k[0])):
    if key not in lc: continue
    a, b = lb[key], lc[key]
    ma, mb = st.mean(a), st.mean(b)
    sa = st.stdev(a) if len(a) > 1 else 0.0
    sb = st.stdev(b) if len(b) > 1 else 0.0
    print(f"{key[0]:<12}{key[1]:>8}{ma:>14.1f} ± {sa:<6.1f}{mb:>14.1f} ± {sb:<6.1f}{ma/mb:>7.3f}x")
if cold:
    def cs(tool):
        v = [tuple(map(float, open(f).read().split()[-2:])) for f in glob.glob(f"{out}/cold.{tool}.*")]
        return [x[0] for x in v], [x[1] for x in v]
    (wa, ra), (wb, rb) = cs("llamabus"), cs("llamacpp")
    print(f"cold start -> 1 token (wall s, min of {rounds}): llamabus {min(wa):.3f}  llama.cpp {min(wb):.3f}"
          f"  ratio {min(wa)/min(wb):.3f}x")
    print(f"peak RSS of that run (MiB, max): llamabus {max(ra)/1024:.1f}  llama.cpp {max(rb)/1024:.1f}"
          f"  ratio {max(ra)/max(rb):.3f}x")
EOF
