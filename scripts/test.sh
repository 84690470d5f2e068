#!/usr/bin/env bash
# The test command (README "Quick start"; .ci/run calls exactly this). On a fresh Debian 12 machine
# with only rustup and gcc it installs what it needs first.
#   0. scripts/setup.sh: apt packages (sudo when not root), rustup components and targets, the
#      pinned nightly, cargo-deb and cargo-fuzz, each only when missing
#   1. fetches the hash-checked test data (SmolLM2 model, llama.cpp vocab files) into models/
#   2. verifies vendor/ggml against its recorded checksum, and the committed bindings against
#      bindgen's output for all three targets
#   3. format and lint gates; import directions; llamabus-wire built no_std for thumbv7em
#   4. the kernel (bit for bit against llama.cpp's build of ggml where it has a reference),
#      tiny-model, golden and format-matrix (14 quantization types vs llama.cpp) suites once per
#      ggml CPU variant this machine runs
#      (LLAMABUS_CPU_VARIANT), the x86 selector under qemu (Nehalem: sse42), then every other suite
#      natively (x86_64 or whatever this machine is) on the variant the selector picks
#   5. on x86_64 (nightly; skip with LLAMABUS_SKIP_FUZZ=1): the GGUF hostile-file suite and
#      model loading under AddressSanitizer, then every fuzz target for FUZZ_SECONDS (20) each
#   6. the ggml and tiny-model suites for aarch64 (each variant) and armv7 under qemu-user, and
#      the aarch64 selector on cortex-a53/a76/max (skip with LLAMABUS_SKIP_ARM=1 on a machine
#      without the cross toolchains)
#   7. the systemd unit (systemd-analyze verify, security score <= 2.0) and the .deb packages
#      for amd64, arm64 and armhf with their contents (skip the arm ones with LLAMABUS_SKIP_ARM=1)
# Release builds are made once each: the baseline kernel tests, the qemu suites and the
# packages share them (`cargo test --release` compiles the library and binary with the release
# profile, and scripts/build-debs.sh packages those same builds).
set -euo pipefail
cd "$(dirname "$0")/.."

# Disk and time: a clean run builds ggml and the dependency tree for several profiles and
# targets. Incremental compilation only pays off on re-runs, at gigabytes of target/; ggml's
# objects are shared by the builds that compile it identically (build.rs, scripts/ggml-cache.rs).
export CARGO_INCREMENTAL=0
export LLAMABUS_GGML_CACHE="$PWD/target/ggml-cache"

t_start=$(date +%s)
t_step=
free_gb() { df -P -BG . | awk 'NR == 2 { sub("G", "", $4); print $4 }'; }
# Prints the previous step's duration and the disk left, then the new step's name.
step() {
  local now
  now=$(date +%s)
  if [ -n "$t_step" ]; then printf '    (%d s, %s GB free)\n' $((now - t_step)) "$(free_gb)"; fi
  t_step=$now
  printf '\n==> %s\n' "$*"
}
# Deletes a finished stage's build directory when the disk runs low (under 30 GB free), so a
# small CI disk holds the run; a developer's machine with room keeps it for the next run.
free_if_low() {
  if [ "$(free_gb)" -lt 30 ]; then
    echo "    disk low ($(free_gb) GB free): removing $*"
    rm -rf "$@"
  fi
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

# Runs a test command quietly, showing only the lines matching $1 (the whole log on failure).
run_showing() {
  local pattern=$1 log
  shift
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log"; rm -f "$log"; exit 1
  fi
  grep -E "$pattern" "$log" || true
  rm -f "$log"
}

# The shipped build carries every ggml CPU variant (x86_64: sse42, avx2, avx512). Each one this
# CPU runs must pass the kernel tests and the tiny-model oracle, and match llama.cpp's greedy output
# for its SIMD path (AVX2 and AVX-512 have references; sse42 has none and says so), also on every
# format llama-quantize makes (format_matrix, issue 19: its first run builds the 14 files from the
# Q4_1 model into models/formats/, ~1.7 GB, sha256-checked against llama-quantize's bytes). Variants
# this CPU cannot run are skipped with the reason (sysinfo's "cannot run" lines).
# The suites that run once per variant (and not again in the full suite below).
PER_VARIANT=(ggml_ops tiny_model golden format_matrix)
step "release build: kernel, tiny-model, golden and format-matrix suites on each CPU variant this machine runs"
cargo build --release --quiet
target/release/llamabus sysinfo | grep -E "^(variants|runs here|variant):"
target/release/llamabus sysinfo | sed -n 's/^cannot run: */skipped, this CPU cannot run variant /p'
read -r -a VARIANTS <<<"$(target/release/llamabus sysinfo | sed -n 's/^runs here: *//p')"
for v in "${VARIANTS[@]}"; do
  echo "-- variant $v"
  LLAMABUS_CPU_VARIANT=$v run_showing \
    "variant|SIMD path|skipped|tokens match|near tie|near-tie|DIFFERS| path: |bit-identical|test result" \
    cargo test --release "${PER_VARIANT[@]/#/--test=}" -- --nocapture
done

if [ "$(uname -m)" = "x86_64" ]; then
  # A CPU without AVX (qemu's Nehalem) selects sse42 and computes correctly.
  step "x86_64 CPU selector under qemu (Nehalem)"
  scripts/qemu-variants.sh x86_64 target/release/llamabus
fi

step "systemd unit: verify and security score"
scripts/check-systemd.sh target/release/llamabus

# Everything else runs on the variant the selector picks for this CPU, as on a device. The four
# suites above already ran on every variant, this one included, so they are not repeated.
SUITES=()
for f in tests/*.rs tests/*/main.rs; do
  name=$(basename "${f%/main.rs}" .rs)
  [[ " ${PER_VARIANT[*]} " == *" $name "* ]] || SUITES+=(--test "$name")
done
step "full suite ($(uname -m)): all but the per-variant suites"
cargo test --lib --bins --examples --benches "${SUITES[@]}"
cargo test --doc
free_if_low target/debug

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
  free_if_low target/asan

  step "fuzzing: each target for ${FUZZ_SECONDS:-20} s from the committed seeds"
  LLAMABUS_NIGHTLY=$NIGHTLY scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
  free_if_low fuzz/target
fi

if [ "${LLAMABUS_SKIP_ARM:-0}" = "1" ]; then
  echo "skipped: aarch64 and armv7 suites under qemu (LLAMABUS_SKIP_ARM=1)"
else
  # The cross suites: ggml kernels against the f32 reference, and the tiny-model graph against
  # the plain-Rust forward pass. qemu is 40-70x slower than native, so only these run there.
  ARM_TESTS=(--test ggml_ops --test cpu_variants)
  [ -f tests/tiny_model.rs ] && ARM_TESTS+=(--test tiny_model)
  for target in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    step "$target tests under qemu-user (runner from .cargo/config.toml)"
    # --release: the library and binary built here are the ones the packages ship. The
    # runner's CPU (cortex-a72, cortex-a7) selects the baseline variant; the log shows which
    # variant ran and the per-type errors.
    run_showing "variant|m=|test result" \
      cargo test --release --target "$target" "${ARM_TESTS[@]}" -- --nocapture
  done
  # aarch64's other variants run the same suites on qemu's `max` CPU, which has every feature.
  for v in dotprod i8mm; do
    step "aarch64-unknown-linux-gnu tests on variant $v (qemu -cpu max)"
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu max -L /usr/aarch64-linux-gnu" \
      LLAMABUS_CPU_VARIANT=$v run_showing "variant|m=|test result" \
      cargo test --release --target aarch64-unknown-linux-gnu "${ARM_TESTS[@]}" -- --nocapture
  done
  step "aarch64 CPU selector under qemu (cortex-a53, cortex-a76, max)"
  scripts/qemu-variants.sh aarch64 target/aarch64-unknown-linux-gnu/release/llamabus
fi

step "packages (cargo-deb)"
if [ "${LLAMABUS_SKIP_ARM:-0}" != "1" ]; then
  scripts/build-debs.sh amd64 arm64 armhf
else
  echo "skipped: arm64 and armhf packages (LLAMABUS_SKIP_ARM=1)"
  scripts/build-debs.sh amd64
fi

step "all tests passed in $(( $(date +%s) - t_start )) s"
