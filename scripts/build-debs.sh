#!/usr/bin/env bash
# Builds the .deb packages with cargo-deb (see [package.metadata.deb] in Cargo.toml) and lists
# their contents:  scripts/build-debs.sh [amd64] [arm64] [armhf]   (default: all three)
# Release builds use the shipped baselines from .cargo/config.toml; RUSTFLAGS is cleared so
# that a "-C target-cpu=native" from a test run never leaks into a package.
# The package of the build machine's own architecture is made from the host build
# (target/release, the same flags: .cargo/config.toml's [target.<host>] rustflags apply to it),
# so after scripts/test.sh's `cargo build --release` it costs no second build; the cross
# packages reuse the release builds that test.sh's qemu suites made.
set -euo pipefail
cd "$(dirname "$0")/.."
unset RUSTFLAGS LLAMABUS_NATIVE

declare -A TRIPLE=(
  [amd64]=x86_64-unknown-linux-gnu
  [arm64]=aarch64-unknown-linux-gnu
  [armhf]=armv7-unknown-linux-gnueabihf
)
arches=("$@")
[ ${#arches[@]} -eq 0 ] && arches=(amd64 arm64 armhf)

host=$(rustc -vV | sed -n 's/^host: //p')

for arch in "${arches[@]}"; do
  t=${TRIPLE[$arch]:?unknown architecture $arch}
  echo "==> $arch ($t)"
  if [ "$t" = "$host" ]; then
    target=()
  else
    target=(--target "$t")
  fi
  cargo build --release --quiet "${target[@]}"
  deb=$(cargo deb --no-build --strip "${target[@]}" --output "target/debian/" 2>&1 | tail -n1)
  [ -f "$deb" ] || { echo "cargo deb: $deb" >&2; exit 1; }
  dpkg-deb --info "$deb" | grep -E "Package|Version|Architecture|Depends|Recommends|Installed-Size"
  contents=$(dpkg-deb -c "$deb")
  echo "$contents"
  echo "$deb: $(stat -c %s "$deb") bytes"
  # The package must carry what the service needs.
  for f in ./usr/bin/llamabus ./etc/llamabus/config.toml ./usr/lib/systemd/system/llamabus.service \
           ./usr/lib/sysusers.d/llamabus.conf; do
    grep -q " $f$" <<<"$contents" || { echo "$deb lacks $f" >&2; exit 1; }
  done
  grep -qx "/etc/llamabus/config.toml" <<<"$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" \
    || { echo "$deb: config.toml is not a conffile" >&2; exit 1; }
  [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || { echo "$deb: wrong architecture" >&2; exit 1; }
done
