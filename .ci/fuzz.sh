#!/usr/bin/env bash
# Runs the five cargo-fuzz targets (fuzz/fuzz_targets: load_onnx, parse_ir, compile,
# read_npy, cli_args) for QLIFT_FUZZ_SECONDS each (default 60) on the stable toolchain,
# starting from the committed seeds in fuzz/seeds/<target>/. Prints the executions per
# target and fails if any target finds a crash, panic, timeout or out-of-memory
# (libFuzzer's exit status, and any new file in fuzz/artifacts/<target>/).
#
# Stable Rust: `-s none` is required (the default AddressSanitizer needs nightly's
# -Zsanitizer); coverage instrumentation (-Cpasses=sancov-module) works on stable.
# A crash found here becomes a regression test: its input goes to
# tests/data/fuzz-regressions/ (see tests/tests/fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${QLIFT_FUZZ_SECONDS:-60}"
targets=(load_onnx parse_ir compile read_npy cli_args)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# One build for the five targets (release, debug assertions, coverage instrumentation).
cargo fuzz build -s none

summary=()
failed=0
for t in "${targets[@]}"; do
    # Absolute paths: a target may change its working directory (cli_args works in a
    # scratch directory), and libFuzzer reads and writes its corpora after the first run.
    corpus="$PWD/fuzz/corpus/$t"     # grows run to run (git-ignored); the seeds stay read-only
    artifacts="$PWD/fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)
    log="$(mktemp)"
    echo "== fuzz $t for ${seconds}s"
    status=0
    # -timeout: an input running longer than 20 s is reported as a hang (a failure).
    cargo fuzz run -s none "$t" "$corpus" "$PWD/fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=20 -rss_limit_mb=2048 \
        >"$log" 2>&1 || status=$?
    after=$(find "$artifacts" -type f | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::' "$log" || true
    if [ "$status" -ne 0 ] || [ "$after" -gt "$before" ]; then
        failed=1
        echo "!! $t FAILED (exit $status); libFuzzer's report:"
        grep -E -A40 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -80 || tail -60 "$log"
        find "$artifacts" -type f -newer "$log" -print
        summary+=("$t: ${execs:-?} executions, FAILED")
    else
        summary+=("$t: ${execs:-?} executions, 0 crashes")
    fi
    rm -f "$log"
done

echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
