#!/usr/bin/env bash
# Regenerates the committed ggml bindings in src/ggml/bindings/ (one file per ABI) for x86_64, aarch64 and
# armv7 from vendor/ggml/include (run after updating vendor/ggml). `--check` only compares, and
# fails if a committed file is stale (scripts/test.sh runs that). Needs libclang (libclang-dev) and,
# for the ARM targets, the cross headers of Debian's libc6-dev-arm64-cross / libc6-dev-armhf-cross.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cargo run --quiet --manifest-path "$root/scripts/gen-bindings/Cargo.toml" \
  --target-dir "$root/target/gen-bindings" -- "$@"
