#!/usr/bin/env bash
# bench/pgo-build.sh: a profile-guided (PGO) release build of sessile; prints the binary's path.
#
#   1. builds an instrumented binary (RUSTFLAGS=-Cprofile-generate) in $PGO_DIR/gen;
#   2. trains it with bench/profile-dataplane.sh: cookie and header mode, persisted and new
#      sessions, TRAIN_SECONDS each (needs what that script needs: nginx, wrk, taskset);
#   3. merges the profiles with the toolchain's llvm-profdata (rustup component llvm-tools);
#   4. builds the optimised binary (RUSTFLAGS=-Cprofile-use) in $PGO_DIR/use.
#
# Usage (from the project root):
#   bench/pgo-build.sh                                   # ~12 minutes on 2 cores
#   SESSILE_BIN=$(bench/pgo-build.sh) bench/run.sh       # the harness with the PGO binary
# Knobs: PGO_DIR=target/pgo  TRAIN_SECONDS=5
#
# Why: the request path's code is spread over many small functions (tokio, http, hyper-util,
# ours); PGO lays the hot ones out together and inlines by measured frequency. Measured in
# docs/performance.md: L1 instruction misses 297 -> 14 per request, instructions -26%, CPU per
# request -10 to -14%. The plain `cargo build --release` stays the supported two-command build;
# this is the extra step for operators who build their own production binaries.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
PGO_DIR=$(mkdir -p "${PGO_DIR:-$root/target/pgo}" && cd "${PGO_DIR:-$root/target/pgo}" && pwd)
TRAIN_SECONDS=${TRAIN_SECONDS:-5}
profdata="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata"
[ -x "$profdata" ] || { echo "llvm-profdata not found: run 'rustup component add llvm-tools'" >&2; exit 2; }

build() { # build <target dir> <RUSTFLAGS>
  (cd "$root" && RUSTFLAGS="$2" cargo build --release -p sessile --target-dir "$1") >&2
}

rm -rf "$PGO_DIR/profiles"
build "$PGO_DIR/gen" "-Cprofile-generate=$PGO_DIR/profiles"
for mode in cookie header; do
  for scenario in persisted new; do
    echo "== training: $mode $scenario" >&2
    SESSILE_BIN="$PGO_DIR/gen/release/sessile" MODE=$mode SCENARIO=$scenario DURATION=$TRAIN_SECONDS \
      OUT="$PGO_DIR/train-$mode-$scenario" "$here/profile-dataplane.sh" >&2
  done
done
"$profdata" merge -o "$PGO_DIR/sessile.profdata" "$PGO_DIR/profiles"
build "$PGO_DIR/use" "-Cprofile-use=$PGO_DIR/sessile.profdata"
echo "$PGO_DIR/use/release/sessile"
