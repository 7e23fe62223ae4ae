#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target under fuzz/ and runs each briefly from its committed seed corpus.
# Exits non-zero on any crash (libFuzzer leaves the input under fuzz/artifacts/<target>/), build failure or
# missing tool. Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
#
#   fuzz/smoke.sh            # every target, FUZZ_SECONDS (default 15) each
#   fuzz/smoke.sh 60 classify copy_split
#
# New inputs go to a scratch directory, never into fuzz/corpus/ (the committed seeds stay small). How to fuzz for
# real and what was found: docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-${FUZZ_SECONDS:-15}}
shift || true
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/smoke.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi
# No sanitizer: shardpool has no unsafe code, and without ASan the build is faster and each run several times
# quicker. Debug assertions turn integer overflow into a crash.
flags=(--sanitizer none --debug-assertions)
cargo +nightly fuzz build "${flags[@]}"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    dict=()
    case $t in
        framing | frontend_messages | backend_messages | startup | auth_*) dict=(-dict=dict/protocol.dict) ;;
        *) dict=(-dict=dict/sql.dict) ;;
    esac
    mkdir -p "$scratch/$t"
    echo "== $t (${seconds}s)"
    if ! cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}" \
        >"$scratch/$t.log" 2>&1; then
        tail -n 40 "$scratch/$t.log"
        failed+=("$t")
    fi
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|^#[0-9]+ +DONE' "$scratch/$t.log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz/smoke.sh: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz/smoke.sh: ${#targets[@]} targets, no crash"
