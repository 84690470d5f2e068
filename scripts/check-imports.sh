#!/usr/bin/env bash
# Fails on any import against the flow (README "Design"):
#   ggml <- gguf <- {tokenizer, sampler} <- model <- engine <- mqtt <- service <- bench/commands/main
# A module may use `crate::X` only for an X on a lower layer (or itself, or the crate root's
# `error_chain`), and only mqtt/ may use the MQTT crates. Comments are not code and are skipped.
# Run from anywhere; prints every offending line and exits 1, else one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A layer=(
  [ggml]=0
  [gguf]=1
  [tokenizer]=2 [sampler]=2
  [model]=3
  [engine]=4
  [mqtt]=5
  [service]=6
  [bench]=7 [commands]=7 [main]=7 [lib]=7
)

bad=0
report() {
  printf '%s\n' "$1"
  bad=1
}

while IFS= read -r file; do
  rel=${file#src/}
  module=${rel%%/*}
  module=${module%.rs}
  own=${layer[$module]:-}
  if [ -z "$own" ]; then
    report "$file: module '$module' has no layer in scripts/check-imports.sh"
    continue
  fi
  # Code lines only (line comments and doc comments dropped), with their numbers.
  while IFS=: read -r line code; do
    for target in $(grep -o 'crate::[a-z_]*' <<<"$code" | sed 's/^crate:://' | sort -u); do
      [ "$target" = "$module" ] && continue
      [ "$target" = "error_chain" ] && continue
      if [ -z "$target" ]; then
        report "$file:$line: grouped \`use crate::{...}\` hides the layers; import each module on its own line"
        continue
      fi
      theirs=${layer[$target]:-}
      if [ -z "$theirs" ]; then
        report "$file:$line: crate::$target has no layer in scripts/check-imports.sh"
      elif [ "$theirs" -ge "$own" ]; then
        report "$file:$line: $module (layer $own) imports crate::$target (layer $theirs): against the flow"
      fi
    done
    if [ "$module" != "mqtt" ] && grep -Eq '\brumqtt[cd]?::' <<<"$code"; then
      report "$file:$line: only mqtt/ talks MQTT"
    fi
  done < <(grep -n -v -E '^\s*//' "$file" || true)
done < <(find src -name '*.rs' -not -path 'src/ggml/bindings/*' | sort)

if [ "$bad" -ne 0 ]; then
  echo "import check: imports against the flow (see README \"Design\")" >&2
  exit 1
fi
echo "import check: every import points down the layers"
