# Tool versions pinned so every run builds the same way; sourced by setup.sh, test.sh, fuzz.sh.
# LLAMABUS_NIGHTLY overrides the nightly (fuzzing and the AddressSanitizer suite).
LLAMABUS_NIGHTLY=${LLAMABUS_NIGHTLY:-nightly-2026-05-20}
export LLAMABUS_NIGHTLY
CARGO_DEB_VERSION=3.8.0
CARGO_FUZZ_VERSION=0.13.2
