#!/usr/bin/env bash
# bench/run.sh: Sessile's whole benchmark suite in one command.
#
#   1. builds the release binary (cargo build --release -p sessile);
#   2. runs the shared anchors harness (../shared/bench/run-anchors.sh) with Sessile as
#      OURS_CMD (bench/ours.sh), once per mode: cookie (vs HAProxy cookie insert and Envoy
#      stateful_session cookie), header (vs HAProxy and Envoy's header extension) and,
#      when asked, none (plain round robin vs nginx-rr and envoy-rr);
#   3. runs the divan micro-benchmarks: route matching (sessile-core matching), load
#      balancing (sessile-core balance), token seal/open/resolve (sessile-session token)
#      and the control plane (sessile-config translate: 5,000 HTTPRoutes);
#   4. runs the control-plane example (translate + swap in 5,000 HTTPRoutes, peak RSS).
#
# Usage (from the project root):
#   bench/run.sh                                   # everything, ~15 minutes
#   MODES=cookie DURATION=4 REPEATS=1 bench/run.sh # a quick pass
#   SKIP_HARNESS=1 bench/run.sh                    # micro-benchmarks only
#
# Knobs (environment):
#   MODES=cookie,header       harness modes to run (cookie, header, none)
#   SKIP_HARNESS=1            skip step 2          SKIP_DIVAN=1   skip steps 3 and 4
#   HARNESS=../shared/bench/run-anchors.sh         the shared harness
#   DURATION REPEATS WARMUP SCENARIOS CONNS LOAD_CPU PROXY_CPU SKIP_INSTALL ...
#                             passed through to the harness (see its header)
#   OUT=bench/results/run-<timestamp>              where logs and tables go
#
# Measure on a quiet machine: the harness compares wall-clock req/s and CPU per request
# across proxies; check `uptime` first and note the load with the figures. Everything the
# harness starts is stopped by PID; this script starts nothing long-lived itself.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
HARNESS=${HARNESS:-$root/../shared/bench/run-anchors.sh}
MODES=${MODES:-cookie,header}
OUT=${OUT:-$root/bench/results/run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

log() { printf '\n== %s\n' "$*" | tee -a "$OUT/summary.md"; }

{
  echo "# bench/run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "- load before: $(uptime)"
  echo "- cpus: $(nproc)"
} >"$OUT/summary.md"

log "build (release)"
(cd "$root" && cargo build --release -p sessile) 2>&1 | tail -n 3 | tee -a "$OUT/summary.md"
export SESSILE_BIN=${SESSILE_BIN:-$root/target/release/sessile}

if [ -z "${SKIP_HARNESS:-}" ]; then
  [ -x "$HARNESS" ] || { echo "harness not found: $HARNESS (set HARNESS=...)" >&2; exit 2; }
  IFS=, read -ra modes <<<"$MODES"
  for mode in "${modes[@]}"; do
    case "$mode" in
      cookie) targets=haproxy,envoy-cookie ;;
      header) targets=haproxy,envoy-header ;;
      none) targets=nginx-rr,envoy-rr ;;
      *) echo "unknown mode $mode (cookie, header, none)" >&2; exit 2 ;;
    esac
    log "harness: mode $mode vs $targets (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    status=0
    (cd "$(dirname "$HARNESS")" &&
      OURS_CMD="$root/bench/ours.sh" OURS_MODE="$mode" OURS_NAME="sessile-$mode" \
        TARGETS="${TARGETS:-$targets}" RESULTS_DIR="$OUT/harness-$mode" "$HARNESS") \
      >"$OUT/harness-$mode.log" 2>&1 || status=$?
    if [ -f "$OUT/harness-$mode/table.md" ]; then
      cat "$OUT/harness-$mode/table.md" | tee -a "$OUT/summary.md"
    else
      tail -n 30 "$OUT/harness-$mode.log" | tee -a "$OUT/summary.md"
    fi
    [ "$status" = 0 ] || echo "(harness exited $status: see $OUT/harness-$mode.log)" | tee -a "$OUT/summary.md"
  done
fi

if [ -z "${SKIP_DIVAN:-}" ]; then
  for b in "sessile-core matching" "sessile-core balance" "sessile-session token" "sessile-config translate"; do
    set -- $b
    log "divan: $1 --bench $2 (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    (cd "$root" && cargo bench -q -p "$1" --bench "$2") 2>&1 | tee "$OUT/divan-$2.txt" | grep -v '^\s*$' >>"$OUT/summary.md"
    tail -n +1 "$OUT/divan-$2.txt" | grep -E '^(├|╰|│|[a-z_]+ )' || true
  done
  log "control plane: translate + swap in 5,000 HTTPRoutes over 500 Services (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  (cd "$root" && cargo build -q --release -p sessile-proxy --example control_plane)
  /usr/bin/time -v "$root/target/release/examples/control_plane" 5000 500 3 2>"$OUT/control-plane-time.txt" |
    tee -a "$OUT/summary.md"
  grep -E 'Maximum resident' "$OUT/control-plane-time.txt" | tee -a "$OUT/summary.md" || true
fi

echo "load after: $(uptime)" >>"$OUT/summary.md"
echo
echo "summary: $OUT/summary.md"
