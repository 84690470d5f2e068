#!/usr/bin/env bash
# Reproduces vendor/ggml from the crates.io package llama-cpp-sys-2 and checks the
# tree checksum recorded in vendor/ggml/VENDORED.md.
#
#   scripts/vendor-ggml.sh          # rebuild vendor/ggml from the registry, then verify
#   scripts/vendor-ggml.sh --check  # only verify the committed tree against VENDORED.md
set -euo pipefail

CRATE=llama-cpp-sys-2
VERSION=0.1.161
CRATE_SHA256=e9bea77fde41bbc15a278891cd5edd2ba07c5260d162614b41080ba1f100b39b

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/vendor/ggml"

# Deterministic checksum over the vendored files (paths and contents), excluding our own VENDORED.md.
tree_sum() {
  (cd "$dest" && find . -type f ! -name VENDORED.md -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

recorded_sum() {
  sed -n 's/^- Tree checksum: `\([0-9a-f]\{64\}\)`.*/\1/p' "$dest/VENDORED.md"
}

if [ "${1:-}" != "--check" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  curl -sSfL -o "$work/crate.tar.gz" "https://static.crates.io/crates/$CRATE/$CRATE-$VERSION.crate"
  echo "$CRATE_SHA256  $work/crate.tar.gz" | sha256sum -c --quiet
  tar -xzf "$work/crate.tar.gz" -C "$work"
  src="$work/$CRATE-$VERSION/llama.cpp"
  keep_md=$(mktemp)
  [ -f "$dest/VENDORED.md" ] && cp "$dest/VENDORED.md" "$keep_md"
  rm -rf "$dest"
  mkdir -p "$dest/src/ggml-cpu/arch"
  cp "$src/LICENSE" "$dest/LICENSE"
  cp -r "$src/ggml/include" "$dest/include"
  for f in ggml.c ggml.cpp ggml-alloc.c ggml-backend.cpp ggml-backend-meta.cpp ggml-backend-impl.h \
           ggml-common.h ggml-impl.h ggml-quants.c ggml-quants.h \
           ggml-threading.cpp ggml-threading.h ggml-version.h.in gguf.cpp; do
    cp "$src/ggml/src/$f" "$dest/src/$f"
  done
  cpu="$src/ggml/src/ggml-cpu"
  for f in "$cpu"/*.c "$cpu"/*.cpp "$cpu"/*.h; do cp "$f" "$dest/src/ggml-cpu/"; done
  cp -r "$cpu/amx" "$cpu/llamafile" "$cpu/tiled" "$dest/src/ggml-cpu/"
  cp -r "$cpu/arch/x86" "$cpu/arch/arm" "$dest/src/ggml-cpu/arch/"
  [ -s "$keep_md" ] && cp "$keep_md" "$dest/VENDORED.md"
  rm -f "$keep_md"
fi

actual=$(tree_sum)
expected=$(recorded_sum || true)
if [ -z "$expected" ]; then
  echo "vendor/ggml tree checksum: $actual (none recorded in VENDORED.md yet)"
  exit 1
fi
if [ "$actual" != "$expected" ]; then
  echo "vendor/ggml checksum MISMATCH: tree $actual, VENDORED.md $expected" >&2
  exit 1
fi
echo "vendor/ggml matches VENDORED.md ($actual)"
