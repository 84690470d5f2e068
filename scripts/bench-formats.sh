#!/usr/bin/env bash
# The README's format table: llamabus vs llama-bench, pp512 and tg128 at 1 and 2 threads, weight
# repacking on in both (their defaults), on SmolLM2-135M as Q4_1, Q4_0, Q4_K_M and Q8_0 and on a
# Llama-3.2-1B-shaped model with random weights as Q4_K_M. Runs scripts/bench-vs-llamacpp.sh once
# per model (same run, alternating) and prints one table at the end. Asserts nothing.
#
#   LLAMACPP_BIN=/path/to/llama.cpp/bin scripts/bench-formats.sh
# Environment:
#   LLAMACPP_BIN   folder with llama-bench, llama-completion and llama-quantize (required; e.g. the
#                  oracle of scripts/build-oracle.sh, built on the same ggml with -DGGML_NATIVE=ON)
#   MODELS_DIR=/tmp/llamabus-formats   where the requantized and synthetic models go (outside the repo)
#   FORMATS="Q4_1 Q4_0 Q4_K_M Q8_0 1B-Q4_K_M"   THREADS=1,2  REPS=3  ROUNDS=2  TESTS="pp512 tg128"
#   REPACK=1 (0: both tools without repacking)
# The SmolLM2 variants are `llama-quantize --allow-requantize` of the fetched Q4_1 model; the 1B
# model is written by `cargo run --example synth-llama` (Llama 3.2 1B's shape, Llama 3's vocabulary
# from models/llama.cpp/ggml-vocab-llama-bpe.gguf, rope_freqs) and quantized the same way.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
: "${LLAMACPP_BIN:?set LLAMACPP_BIN to a folder with llama-bench, llama-completion, llama-quantize}"
dir=${MODELS_DIR:-/tmp/llamabus-formats}
formats=${FORMATS:-"Q4_1 Q4_0 Q4_K_M Q8_0 1B-Q4_K_M"}
case "$dir" in "$repo"/*) echo "MODELS_DIR must be outside the repo" >&2; exit 2 ;; esac
mkdir -p "$dir"
base=$repo/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$base" ] || "$repo/scripts/fetch-test-data.sh"

model_for() {
    case $1 in
        Q4_1) echo "$base" ;;
        1B-*)
            local q=${1#1B-} f=$dir/llama-3.2-1b-shape.Q8_0.gguf
            if [ ! -f "$f" ]; then
                (cd "$repo" && cargo run --release --quiet --example synth-llama -- \
                    models/llama.cpp/ggml-vocab-llama-bpe.gguf "$f") >&2
            fi
            if [ ! -f "$dir/llama-3.2-1b-shape.$q.gguf" ]; then
                "$LLAMACPP_BIN/llama-quantize" --allow-requantize "$f" "$dir/llama-3.2-1b-shape.$q.gguf" "$q" >"$dir/quantize-1b-$q.log" 2>&1
            fi
            echo "$dir/llama-3.2-1b-shape.$q.gguf" ;;
        *)
            if [ ! -f "$dir/SmolLM2-135M-Instruct.$1.gguf" ]; then
                "$LLAMACPP_BIN/llama-quantize" --allow-requantize "$base" "$dir/SmolLM2-135M-Instruct.$1.gguf" "$1" >"$dir/quantize-$1.log" 2>&1
            fi
            echo "$dir/SmolLM2-135M-Instruct.$1.gguf" ;;
    esac
}

summary=$dir/summary.txt
: >"$summary"
for f in $formats; do
    m=$(model_for "$f")
    echo "=== $f: $m" | tee -a "$summary"
    COLD=${COLD:-0} ROUNDS=${ROUNDS:-2} REPS=${REPS:-3} "$repo/scripts/bench-vs-llamacpp.sh" "$m" | tee -a "$summary"
done
echo
echo "| model | threads | test | llamabus t/s | llama.cpp t/s | ratio |"
echo "|---|---|---|---|---|---|"
awk '/^=== /{m=$2} /^(pp|tg)[0-9]/{printf "| %s | %s | %s | %s | %s | %s |\n", m, $2, $1, $3, $6, $9}' "$summary"
