#!/usr/bin/env bash
# The test command (README "Quick start"; .ci/run calls exactly this). On a fresh Debian 12 machine
# with only rustup and gcc it installs what it needs first.
#   0. scripts/setup.sh: apt packages (sudo when not root), rustup components and targets, the
#      pinned nightly, cargo-deb and cargo-fuzz, each only when missing
#   1. fetches the hash-checked test data (SmolLM2 model, llama.cpp vocab files) into models/
#   2. verifies vendor/ggml against its recorded checksum, and the committed bindings against
#      bindgen's output for all three targets
#   3. format and lint gates; import directions; llamabus-wire built no_std for thumbv7em
#   3b. the portable x86 build: kernel tests (bit for bit against llama.cpp's build of ggml),
#      the golden check, and the format matrix (14 quantization types vs llama.cpp's greedy tokens)
#   4. the whole suite natively (x86_64 or whatever this machine is)
#   5. on x86_64 (nightly; skip with LLAMABUS_SKIP_FUZZ=1): the GGUF hostile-file suite and
#      model loading under AddressSanitizer, then every fuzz target for FUZZ_SECONDS (20) each
#   6. the ggml and tiny-model suites for aarch64 and armv7 under qemu-user
#      (skip with LLAMABUS_SKIP_ARM=1 on a machine without the cross toolchains)
#   7. the systemd unit (systemd-analyze verify, security score <= 2.0) and the .deb packages
#      for amd64, arm64 and armhf with their contents (skip the arm ones with LLAMABUS_SKIP_ARM=1)
# Release builds are made once each: the baseline kernel tests, the qemu suites and the
# packages share them (`cargo test --release` compiles the library and binary with the release
# profile, and scripts/build-debs.sh packages those same builds).
set -euo pipefail
cd "$(dirname "$0")/.."

t_start=$(date +%s)
t_step=
# Prints the previous step's duration, then the new step's name.
step() {
  local now
  now=$(date +%s)
  if [ -n "$t_step" ]; then printf '    (%d s)\n' $((now - t_step)); fi
  t_step=$now
  printf '\n==> %s\n' "$*"
}
# shellcheck source=scripts/pins.sh
. scripts/pins.sh
NIGHTLY=$LLAMABUS_NIGHTLY

step "set-up: install what is missing"
scripts/setup.sh

step "test data"
scripts/fetch-test-data.sh

step "vendored ggml checksum"
scripts/vendor-ggml.sh --check

step "committed bindings equal bindgen's output (x86_64, aarch64, armv7)"
scripts/gen-bindings.sh --check

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

# --- the layering and the wire crate (issue 17) ---------------------------------------------
# Imports point one way (README "Design"); the protocol crate stays no_std for device firmware.
step "import directions"
scripts/check-imports.sh

step "llamabus-wire: clippy (std and no_std), example, and a no_std build for thumbv7em-none-eabihf"
cargo clippy -p llamabus-wire --all-targets --quiet -- -D warnings
cargo clippy -p llamabus-wire --no-default-features --quiet -- -D warnings
cargo run -p llamabus-wire --example firmware --quiet
cargo build -p llamabus-wire --no-default-features --target thumbv7em-none-eabihf --quiet
# ---------------------------------------------------------------------------------------------

# The shipped portable baseline (x86_64: AVX2+FMA+F16C) must build, its kernels must agree with
# the f32 reference, and its greedy output must match llama.cpp's for the same SIMD path (AVX2
# here on every x86 CPU; the native suite below checks this CPU's own path, AVX-512 where present).
step "portable-baseline build, ggml kernel tests and golden check"
cargo build --release --quiet
cargo test --release --quiet --test ggml_ops
log=$(mktemp)
if ! cargo test --release --test golden -- --nocapture >"$log" 2>&1; then
  cat "$log"; rm -f "$log"; exit 1
fi
# Which reference and SIMD path were used, and what matched.
grep -E "SIMD path|skipped|tokens match|near tie|test result" "$log" || true
rm -f "$log"

# Every format llama-quantize makes (issue 19): the first run builds the 14 files from the Q4_1
# model into models/formats/ (~1.7 GB, sha256-checked against llama-quantize's bytes), later runs
# reuse them; the native suite below runs the same test again on this CPU's own SIMD path.
step "format matrix (14 types x 5 prompts vs llama.cpp), portable build"
log=$(mktemp)
if ! cargo test --release --test format_matrix -- --nocapture >"$log" 2>&1; then
  cat "$log"; rm -f "$log"; exit 1
fi
grep -E "SIMD path|skipped|near-tie|DIFFERS| path: |test result" "$log" || true
rm -f "$log"

step "systemd unit: verify and security score"
scripts/check-systemd.sh target/release/llamabus

# Everything else runs on a build for this CPU, as on a device (and as llama.cpp produced the
# golden reference: -march=native). RUSTFLAGS only applies here, not to the cross builds below.
step "full suite, native build ($(uname -m))"
RUSTFLAGS="-C target-cpu=native" cargo test --all-targets
RUSTFLAGS="-C target-cpu=native" cargo test --doc

if [ "${LLAMABUS_SKIP_FUZZ:-0}" = "1" ]; then
  echo "skipped: AddressSanitizer suite and fuzzing (LLAMABUS_SKIP_FUZZ=1)"
elif [ "$(uname -m)" != "x86_64" ]; then
  echo "skipped: AddressSanitizer suite and fuzzing (x86_64 hosts only)"
else
  # The parser is ours but the bytes reach ggml: run the hostile-file suite and the loader
  # under ASan, with ggml's C/C++ instrumented too (the cc crate adds -fsanitize=address when
  # rustc sanitizes the target; only for x86_64 Linux). Own target dir: nightly + ASan flags.
  step "GGUF hostile files and model loading under AddressSanitizer ($NIGHTLY)"
  CARGO_TARGET_DIR=target/asan RUSTFLAGS="-Zsanitizer=address" \
    cargo "+$NIGHTLY" test --quiet --target x86_64-unknown-linux-gnu --test gguf --test model_load

  step "fuzzing: each target for ${FUZZ_SECONDS:-20} s from the committed seeds"
  LLAMABUS_NIGHTLY=$NIGHTLY scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
fi

if [ "${LLAMABUS_SKIP_ARM:-0}" = "1" ]; then
  echo "skipped: aarch64 and armv7 suites under qemu (LLAMABUS_SKIP_ARM=1)"
else
  # The cross suites: ggml kernels against the f32 reference, and the tiny-model graph against
  # the plain-Rust forward pass. qemu is 40-70x slower than native, so only these run there.
  ARM_TESTS=(--test ggml_ops)
  [ -f tests/tiny_model.rs ] && ARM_TESTS+=(--test tiny_model)
  for target in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    step "$target tests under qemu-user (runner from .cargo/config.toml)"
    log=$(mktemp)
    # --release: the library and binary built here are the ones the packages ship.
    if ! cargo test --release --target "$target" "${ARM_TESTS[@]}" -- --nocapture >"$log" 2>&1; then
      cat "$log"; rm -f "$log"; exit 1
    fi
    # Show which SIMD path ran and the per-type errors, so the log proves NEON was used.
    grep -E "compiled|ggml reports|m=|test result" "$log" || true
    rm -f "$log"
  done
fi

step "packages (cargo-deb)"
if [ "${LLAMABUS_SKIP_ARM:-0}" != "1" ]; then
  scripts/build-debs.sh amd64 arm64 armhf
else
  echo "skipped: arm64 and armhf packages (LLAMABUS_SKIP_ARM=1)"
  scripts/build-debs.sh amd64
fi

step "all tests passed in $(( $(date +%s) - t_start )) s"
