#!/usr/bin/env bash
# Installs what scripts/test.sh needs, only where it is missing (idempotent; a second run only
# checks). Called by scripts/test.sh; run it alone to prepare a machine.
#   apt packages   mosquitto (the real broker), openssl (TLS test certificates), systemd
#                  (systemd-analyze), clang + libclang-dev (checking the committed bindings), and
#                  unless LLAMABUS_SKIP_ARM=1: the aarch64/armhf cross gcc and qemu-user
#   rustup         rustfmt, clippy; the aarch64/armv7 targets unless LLAMABUS_SKIP_ARM=1;
#                  thumbv7em-none-eabihf (llamabus-wire's no_std build)
#   nightly        LLAMABUS_NIGHTLY (scripts/pins.sh) and cargo-fuzz, unless LLAMABUS_SKIP_FUZZ=1 or
#                  the host is not x86_64 (the ASan suite and libFuzzer run there only)
#   cargo-deb      the .deb packages (versions pinned in scripts/pins.sh)
# apt runs through sudo when not root. Every skipped step is printed with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/pins.sh
. scripts/pins.sh
NIGHTLY=$LLAMABUS_NIGHTLY
SKIP_ARM=${LLAMABUS_SKIP_ARM:-0}
SKIP_FUZZ=${LLAMABUS_SKIP_FUZZ:-0}

skipped() { printf 'setup: skipped %s (%s)\n' "$1" "$2"; }

# --- apt packages -------------------------------------------------------------------------
packages=(mosquitto mosquitto-clients openssl systemd clang libclang-dev)
if [ "$SKIP_ARM" != "1" ]; then
  packages+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross
             gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user)
else
  skipped "cross compilers and qemu-user" "LLAMABUS_SKIP_ARM=1"
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || {
    echo "setup: missing packages ${missing[*]}, and this system has no apt-get: install them by hand" >&2
    exit 1
  }
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: apt packages present"
fi

# --- rustup components and targets ---------------------------------------------------------
have_component() { rustup component list --installed 2>/dev/null | grep -q "^$1"; }
for c in rustfmt clippy; do
  have_component "$c" || rustup component add "$c"
done
targets=()
if [ "$SKIP_ARM" != "1" ]; then
  targets+=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
fi
installed_targets=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
done
[ "$SKIP_ARM" = "1" ] && skipped "rustup targets for aarch64/armv7" "LLAMABUS_SKIP_ARM=1"

# --- llamabus-wire's microcontroller target (issue 17) ---------------------------------------
# scripts/test.sh builds the no_std protocol crate for a Cortex-M4F, as device firmware would.
grep -qx thumbv7em-none-eabihf <<<"$(rustup target list --installed)" \
  || rustup target add thumbv7em-none-eabihf

# --- cargo tools --------------------------------------------------------------------------
if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi

if [ "$SKIP_FUZZ" = "1" ]; then
  skipped "nightly toolchain and cargo-fuzz" "LLAMABUS_SKIP_FUZZ=1"
elif [ "$(uname -m)" != "x86_64" ]; then
  skipped "nightly toolchain and cargo-fuzz" "the ASan suite and fuzzing run on x86_64 hosts only"
else
  rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 \
    || rustup toolchain install "$NIGHTLY" --profile minimal
  if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
  fi
fi
echo "setup: done"
