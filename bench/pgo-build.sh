#!/usr/bin/env bash
# bench/pgo-build.sh: a profile-guided (PGO) release build of sessile; prints the binary's path.
#
#   1. builds an instrumented binary (RUSTFLAGS=-Cprofile-generate) in $PGO_DIR/gen, and the
#      trainer (sessile-testkit's `pgo-train`) with it;
#   2. trains it: `pgo-train` starts backends and clients in-process on 127.0.0.1 and drives
#      the instrumented `sessile serve` through cookie and header sessions (persisted and new),
#      round robin, request bodies, h2c, HTTPS (HTTP/1.1 and h2) and the access log, for
#      TRAIN_SECONDS in all; it fails if a request fails or no profile is written;
#   3. merges the profiles with the toolchain's llvm-profdata (rustup component llvm-tools);
#   4. builds the optimised binary (RUSTFLAGS=-Cprofile-use) in $PGO_DIR/use.
#
# Usage (from the project root; needs only cargo and llvm-tools, so it also runs in
# deploy/Dockerfile, which builds the container image this way):
#   bench/pgo-build.sh                                   # ~12 minutes on 2 cores
#   SESSILE_BIN=$(bench/pgo-build.sh) bench/run.sh       # the harness with the PGO binary
# Knobs: PGO_DIR=target/pgo  TRAIN_SECONDS=24  CARGO_FLAGS (e.g. --locked)
#
# Why: the request path's code is spread over many small functions (tokio, http, hyper-util,
# ours); PGO lays the hot ones out together and inlines by measured frequency. Measured in
# docs/performance.md: L1 instruction misses 297 -> 14 per request, instructions -26%, CPU per
# request -10 to -14%. The plain `cargo build --release` stays the two-command build.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
PGO_DIR=$(mkdir -p "${PGO_DIR:-$root/target/pgo}" && cd "${PGO_DIR:-$root/target/pgo}" && pwd)
TRAIN_SECONDS=${TRAIN_SECONDS:-24}
profdata="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
[ -x "$profdata" ] || { echo "llvm-profdata not found: run 'rustup component add llvm-tools'" >&2; exit 2; }

build() { # build <target dir> <RUSTFLAGS> <cargo build arguments...>
  local dir=$1 flags=$2
  shift 2
  # shellcheck disable=SC2086 # CARGO_FLAGS is a list of flags
  (cd "$root" && RUSTFLAGS="$flags" cargo build --release ${CARGO_FLAGS:-} --target-dir "$dir" "$@") >&2
}

rm -rf "$PGO_DIR/profiles" "$PGO_DIR/trainer-profiles"
generate="-Cprofile-generate=$PGO_DIR/profiles"
build "$PGO_DIR/gen" "$generate" -p sessile
# The trainer is built in its own cargo run, so its dependencies' features are not unified into
# the shipped binary's; it is instrumented too (the same RUSTFLAGS, so the shared dependencies
# are not rebuilt), and its own profile is dropped.
build "$PGO_DIR/gen" "$generate" -p sessile-testkit --bin pgo-train
LLVM_PROFILE_FILE="$PGO_DIR/trainer-profiles/%p.profraw" "$PGO_DIR/gen/release/pgo-train" \
  --sessile "$PGO_DIR/gen/release/sessile" --profile-dir "$PGO_DIR/profiles" --seconds "$TRAIN_SECONDS" >&2
"$profdata" merge -o "$PGO_DIR/sessile.profdata" "$PGO_DIR/profiles"
build "$PGO_DIR/use" "-Cprofile-use=$PGO_DIR/sessile.profdata" -p sessile
echo "$PGO_DIR/use/release/sessile"
