#!/usr/bin/env bash
# Builds the llama.cpp "oracle" that llamabus is compared against, OUTSIDE the repository, on the same ggml
# as vendor/ggml, and makes the format-matrix model files with its llama-quantize.
#
#   scripts/build-oracle.sh DEST [--simd native|avx2] [--no-models]
#
# Source tree (DEST/llama.cpp): the tools, common/ and CMake files of the PyPI sdist llama-cpp-python==0.3.36
# (its own ggml is 0.25.x), with llama.cpp/src, include and ggml replaced by those of the crates.io package
# llama-cpp-sys-2 =0.1.161 (ggml 0.26, the one scripts/vendor-ggml.sh vendors).
#
# Builds (Release, -j2, static): DEST/bin-SIMD/{llama-server,llama-completion,llama-quantize,llama-bench}, and
# DEST/bin-SIMD/ggml-kernel-ref (scripts/oracle/ggml-kernel-ref.c on the same ggml libraries)
#   --simd native  -DGGML_NATIVE=ON (this CPU; AVX-512 where it has it)          [default]
#   --simd avx2    -DGGML_NATIVE=OFF and AVX2+FMA+F16C+BMI2 only: the path of llamabus' portable x86 build
#
# Model files (unless --no-models): DEST/models/SmolLM2-135M-Instruct.TYPE.gguf for every TYPE below, made with
# `llama-quantize --allow-requantize` from models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-test-data.sh).
# Idempotent: finished steps are skipped. Needs cmake (apt or `pip install cmake`), a C/C++ compiler, cargo, pip.
set -euo pipefail

TYPES="Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K IQ4_NL IQ4_XS F16 BF16"
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
CRATE=llama-cpp-sys-2
CRATE_VERSION=0.1.161
CRATE_SHA256=e9bea77fde41bbc15a278891cd5edd2ba07c5260d162614b41080ba1f100b39b
JOBS=${JOBS:-2}

[ $# -ge 1 ] || { echo "usage: $0 DEST [--simd native|avx2] [--no-models]" >&2; exit 2; }
dest=$(mkdir -p "$1" && cd "$1" && pwd)
shift
simd=native
models=1
while [ $# -gt 0 ]; do
  case "$1" in
    --simd) simd=$2; shift 2 ;;
    --no-models) models=0; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
check() { echo "$1  $2" | sha256sum -c --quiet - >/dev/null 2>&1; }

# 1. The merged source tree.
src="$dest/llama.cpp"
if [ ! -f "$src/.complete" ]; then
  dl="$dest/download"
  mkdir -p "$dl"
  sdist="$dl/llama_cpp_python-0.3.36.tar.gz"
  if ! check "$SDIST_SHA256" "$sdist"; then
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python --dest "$dl" llama-cpp-python==0.3.36
  fi
  check "$SDIST_SHA256" "$sdist" || { echo "sdist hash mismatch: $sdist" >&2; exit 1; }
  # The crate through cargo itself: a throw-away project depending on it, then `cargo fetch`.
  crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRATE-$CRATE_VERSION.crate" 2>/dev/null | head -1 || true)
  if [ -z "$crate" ]; then
    fetch="$dl/fetch-crate"
    mkdir -p "$fetch/src"
    printf '[package]\nname = "fetch-crate"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s = "=%s"\n' \
      "$CRATE" "$CRATE_VERSION" >"$fetch/Cargo.toml"
    : >"$fetch/src/lib.rs"
    (cd "$fetch" && cargo fetch --quiet)
    crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRATE-$CRATE_VERSION.crate" | head -1)
  fi
  check "$CRATE_SHA256" "$crate" || { echo "crate hash mismatch: $crate" >&2; exit 1; }
  rm -rf "$src" "$dl/x"
  mkdir -p "$dl/x"
  tar -xzf "$sdist" -C "$dl/x" llama_cpp_python-0.3.36/vendor/llama.cpp
  tar -xzf "$crate" -C "$dl/x" "$CRATE-$CRATE_VERSION/llama.cpp/src" "$CRATE-$CRATE_VERSION/llama.cpp/include" \
    "$CRATE-$CRATE_VERSION/llama.cpp/ggml"
  mv "$dl/x/llama_cpp_python-0.3.36/vendor/llama.cpp" "$src"
  for d in src include ggml; do
    rm -rf "${src:?}/$d"
    mv "$dl/x/$CRATE-$CRATE_VERSION/llama.cpp/$d" "$src/$d"
  done
  rm -rf "$dl/x"
  touch "$src/.complete"
fi

# 2. The build.
case "$simd" in
  native) flags=(-DGGML_NATIVE=ON) ;;
  avx2) flags=(-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
               -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF) ;;
  *) echo "--simd must be native or avx2" >&2; exit 2 ;;
esac
# One CMake tree serves both paths: only ggml-cpu's flags differ, so switching --simd recompiles
# that library alone and relinks; each path's tools are copied to DEST/bin-SIMD.
build="$dest/build"
bin="$dest/bin-$simd"
tools=(llama-server llama-completion llama-quantize llama-bench)
if ! (cd "$bin" 2>/dev/null && ls "${tools[@]}" >/dev/null 2>&1); then
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release "${flags[@]}" -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DGGML_OPENMP=OFF >"$dest/cmake-$simd.log"
  cmake --build "$build" -j "$JOBS" --target "${tools[@]}"
  mkdir -p "$bin"
  for t in "${tools[@]}"; do cp "$build/bin/$t" "$bin/$t"; done
  # The kernel-reference generator for tests/ggml_ops.rs, on this build's ggml libraries.
  libs=$(find "$build/ggml/src" -name 'libggml-cpu.a' -o -name 'libggml-base.a' | sort -r)
  # shellcheck disable=SC2086
  cc -O2 -std=gnu11 -I"$src/ggml/include" "$root/scripts/oracle/ggml-kernel-ref.c" $libs \
    -lstdc++ -lm -lpthread -o "$bin/ggml-kernel-ref"
fi
echo "ok  $bin: ${tools[*]}"

# 3. The model files (llama-quantize's choice of per-tensor types is part of what is being tested).
[ "$models" = 1 ] || exit 0
base="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$base" ] || { echo "missing $base: run scripts/fetch-test-data.sh" >&2; exit 1; }
mkdir -p "$dest/models"
for t in $TYPES; do
  out="$dest/models/SmolLM2-135M-Instruct.$t.gguf"
  [ -f "$out" ] && continue
  "$bin/llama-quantize" --allow-requantize "$base" "$out.part" "$t" "$JOBS" >"$out.log" 2>&1 \
    || { echo "llama-quantize $t failed, see $out.log" >&2; exit 1; }
  mv "$out.part" "$out"
done
echo "ok  $dest/models: $TYPES"
