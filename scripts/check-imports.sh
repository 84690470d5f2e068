#!/usr/bin/env bash
# Fails on any import against the flow (README "Design"):
#   ggml <- gguf <- {tokenizer, sampler} <- {model, format} <- engine <- mqtt <- service <- bench/commands/main
# A module may use `crate::X` only for an X on a lower layer (or itself, or the crate root's
# `error_chain`), and only mqtt/ may use the MQTT crates. Comments are not code and are skipped.
# Run from anywhere; prints every offending line and exits 1, else one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

find src -name '*.rs' -not -path 'src/ggml/bindings/*' | sort | xargs awk '
BEGIN {
  split("ggml:0 gguf:1 tokenizer:2 sampler:2 model:3 format:3 engine:4 mqtt:5 service:6 bench:7 commands:7 main:7 lib:7", pairs, " ")
  for (i in pairs) { split(pairs[i], kv, ":"); layer[kv[1]] = kv[2] }
  bad = 0
}
FNR == 1 {
  module = FILENAME
  sub(/^src\//, "", module); sub(/\/.*/, "", module); sub(/\.rs$/, "", module)
  if (!(module in layer)) { printf "%s: module %s has no layer in scripts/check-imports.sh\n", FILENAME, module; bad = 1 }
}
/^[ \t]*\/\// { next }
{
  line = $0
  while (match(line, /crate::[a-z_]*/)) {
    target = substr(line, RSTART + 7, RLENGTH - 7)
    line = substr(line, RSTART + RLENGTH)
    if (target == module || target == "error_chain" || !(module in layer)) continue
    if (target == "") {
      printf "%s:%d: grouped `use crate::{...}` hides the layers; import each module on its own line\n", FILENAME, FNR; bad = 1
    } else if (!(target in layer)) {
      printf "%s:%d: crate::%s has no layer in scripts/check-imports.sh\n", FILENAME, FNR, target; bad = 1
    } else if (layer[target] >= layer[module]) {
      printf "%s:%d: %s (layer %d) imports crate::%s (layer %d): against the flow\n", FILENAME, FNR, module, layer[module], target, layer[target]; bad = 1
    }
  }
  if (module != "mqtt" && $0 ~ /(^|[^a-z_])rumqtt[cd]?::/) {
    printf "%s:%d: only mqtt/ talks MQTT\n", FILENAME, FNR; bad = 1
  }
}
END {
  if (bad) { print "import check: imports against the flow (see README \"Design\")" > "/dev/stderr"; exit 1 }
  print "import check: every import points down the layers"
}'
