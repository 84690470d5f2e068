#!/usr/bin/env bash
# The CPU selector on emulated CPUs: each named core must select its variant (`sysinfo`), and that
# variant must answer SmolLM2's `14 + 16 =` with ` 24.` in a 4-token greedy completion.
#   scripts/qemu-variants.sh x86_64    target/release/llamabus
#   scripts/qemu-variants.sh aarch64   target/aarch64-unknown-linux-gnu/release/llamabus
# qemu-user emulates 40-70x slower than native, so each core runs one short completion only.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=$1
bin=$2
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -x "$bin" ] || { echo "qemu-variants: no binary $bin (build it first)" >&2; exit 1; }
[ -f "$model" ] || { echo "qemu-variants: no $model (scripts/fetch-test-data.sh)" >&2; exit 1; }

case "$arch" in
  # Nehalem: SSE4.2 without AVX (qemu cannot emulate AVX-512 at all, so avx512 is only tested
  # natively, where the CPU has it).
  x86_64) runner=(qemu-x86_64); cores=("Nehalem sse42") ;;
  # Pi 3 (A53, armv8.0), Pi 5 (A76: dotprod, fp16), and qemu's `max` (i8mm, SVE, ...).
  aarch64) runner=(qemu-aarch64 -L /usr/aarch64-linux-gnu); cores=("cortex-a53 armv8" "cortex-a76 dotprod" "max i8mm") ;;
  *) echo "qemu-variants: unknown arch $arch (x86_64, aarch64)" >&2; exit 1 ;;
esac

fail=0
for entry in "${cores[@]}"; do
  read -r core want <<<"$entry"
  # Nothing forced: the selector alone decides.
  info=$(env -u LLAMABUS_CPU_VARIANT "${runner[@]}" -cpu "$core" "$bin" sysinfo)
  got=$(sed -n 's/^variant: *//p' <<<"$info")
  start=$(date +%s)
  answer=$(env -u LLAMABUS_CPU_VARIANT "${runner[@]}" -cpu "$core" "$bin" complete --model "$model" \
    --temperature 0 --max-tokens 4 --ctx 64 --threads 2 "14 + 16 =" 2>/dev/null || true)
  secs=$(( $(date +%s) - start ))
  if [[ "$got" != "$want "* ]]; then
    echo "FAIL $arch -cpu $core: selected \"$got\", expected $want"; echo "$info"; fail=1
  elif [[ "$answer" != " 24."* ]]; then
    echo "FAIL $arch -cpu $core ($want): answered \"$answer\", expected \" 24.\""; fail=1
  else
    echo "ok   $arch -cpu $core: variant $got; 14 + 16 = \"$answer\" (${secs} s)"
  fi
done
exit $fail
