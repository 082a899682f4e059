#!/usr/bin/env bash
# Runs Sessile's fuzz targets with cargo-fuzz (libFuzzer) on the *stable* toolchain.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS: per target (default 600). TARGETs: default all four. Each target fuzzes
# fuzz/corpus/<target> (new inputs are written there) plus the read-only seeds in
# fuzz/seeds/<target>, then the corpus is minimised in place with `cargo fuzz cmin` (edge coverage only).
# Crashes land in fuzz/artifacts/<target>/; logs in fuzz/logs/<target>.log.
# Environment: FUZZ_ARGS adds libFuzzer flags (e.g. FUZZ_ARGS="-jobs=2 -workers=2").
set -euo pipefail

# cargo-fuzz passes -Zsanitizer=address etc., which are nightly-only flags. RUSTC_BOOTSTRAP=1
# lets the stable compiler accept them (the ASan runtime ships with stable rust-std).
export RUSTC_BOOTSTRAP=1

cd "$(dirname "$0")"
secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(token_open cookie_header config_translate route_match)
fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 1; }

mkdir -p logs
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== $t: ${secs}s" >&2
    # -timeout: an input taking >10 s counts as a hang; -rss_limit_mb bounds memory.
    # shellcheck disable=SC2086
    if ! cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_ARGS:-} \
        2>&1 | tee "logs/$t.log" | grep -E "^(#[0-9]+ +(DONE|INITED)|==[0-9]+==|SUMMARY|stat::|artifact_prefix|Test unit written)" >&2; then
        :
    fi
    if grep -q "Test unit written" "logs/$t.log"; then
        echo "!! $t crashed; see fuzz/artifacts/$t/ and logs/$t.log" >&2
        status=1
    fi
    # Minimise on edge coverage only (-use_counters=0): hit-count buckets would keep thousands of
    # near-duplicates and push the committed corpora past 2 MB.
    echo "== $t: minimising corpus" >&2
    cargo fuzz cmin "$t" "corpus/$t" -- -use_counters=0 -timeout=10 -rss_limit_mb=2048 >"logs/$t.cmin.log" 2>&1 || echo "cmin failed, see logs/$t.cmin.log" >&2
    echo "== $t: $(ls "corpus/$t" | wc -l) inputs, $(du -sh --apparent-size "corpus/$t" | cut -f1)" >&2
done
exit $status
