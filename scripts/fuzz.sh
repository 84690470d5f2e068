#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets: format, gguf, request, tokenizer) for SECONDS each
# (default 30) under libFuzzer + AddressSanitizer (ggml's C/C++ is built with ASan too),
# starting from the committed seeds in fuzz/seeds and the local corpus in fuzz/corpus.
# Prints executions per target; a crash fails with the reproducer in fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh [SECONDS]
# Needs a nightly toolchain (LLAMABUS_NIGHTLY, pinned in scripts/pins.sh) and cargo-fuzz, both
# installed by scripts/setup.sh if missing. The targets are built before the clock
# starts, so SECONDS is fuzzing time; scripts/test.sh runs this for 20 s per target.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
# shellcheck source=scripts/pins.sh
. scripts/pins.sh
NIGHTLY=$LLAMABUS_NIGHTLY
LLAMABUS_SKIP_ARM=1 scripts/setup.sh >/dev/null   # the nightly and cargo-fuzz, if missing
scripts/fetch-test-data.sh >/dev/null   # the tokenizer target reads llama.cpp's vocabularies

cargo "+$NIGHTLY" fuzz build -O
for t in format gguf request tokenizer; do
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  if ! cargo "+$NIGHTLY" fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$SECS" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
    rm -f "$log"
    exit 1
  fi
  runs=$(grep -m1 -o 'number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz $t: $runs executions in ${SECS} s, corpus $(ls "fuzz/corpus/$t" | wc -l) inputs"
  rm -f "$log"
done
