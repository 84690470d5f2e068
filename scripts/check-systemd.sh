#!/usr/bin/env bash
# Checks systemd/llamabus.service as shipped:
#   1. `systemd-analyze verify`: any message (error or warning) fails. verify insists that
#      ExecStart's binary exists, and /usr/bin/llamabus does not on a build machine, so it runs on
#      a copy of the unit in which only that path is rewritten to the binary just built
#      (argument 1, default target/release/llamabus); every other line is verified as shipped.
#      (`--root=` would check the real path but needs a whole systemd tree: sysinit.target,
#      /bin/kill, ... inside the root.)
#   2. `systemd-analyze security --offline=true`: the exposure score must be 2.0 or lower
#      (--threshold counts tenths).
set -euo pipefail
cd "$(dirname "$0")/.."

unit=systemd/llamabus.service
bin=$(realpath "${1:-target/release/llamabus}")
[ -x "$bin" ] || { echo "check-systemd: $bin is not built" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/bin/llamabus|$bin|" "$unit" > "$tmp/llamabus.service"
if ! diff <(grep -v '^ExecStart=' "$unit") <(grep -v '^ExecStart=' "$tmp/llamabus.service") >/dev/null; then
  echo "check-systemd: the rewrite touched more than ExecStart" >&2; exit 1
fi
out=$(systemd-analyze verify "$tmp/llamabus.service" 2>&1) || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "check-systemd: systemd-analyze verify complained:" >&2; echo "$out" >&2; exit 1
fi
echo "systemd-analyze verify $unit: clean"

score=$(systemd-analyze security --offline=true "$unit" 2>&1 | sed -n 's/.*Overall exposure level for llamabus.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security --offline=true $unit: exposure $score"
systemd-analyze security --offline=true --threshold=20 "$unit" >/dev/null \
  || { echo "check-systemd: exposure $score is above 2.0" >&2; exit 1; }
