#!/usr/bin/env bash
# Runs sluice's fuzz targets (fuzz/, cargo-fuzz on libFuzzer) one after another, each
# for a fixed time, and fails on the first crash, leak or oracle failure; libFuzzer
# names the input that did it under fuzz/artifacts/<target>/.
#
#   benches/fuzz.sh                      # every target, 30 s each
#   benches/fuzz.sh 60 config origin     # two targets, 60 s each
#
# Needs the nightly toolchain (installed with rustup when missing) and cargo-fuzz
# (installed when missing). The seed corpus (fuzz/corpus/<target>/) is only read;
# what a run finds is kept in fuzz/target/corpus/<target>/, which later runs resume.
set -euo pipefail

seconds=30
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi

cd "$(dirname "$0")/../fuzz"

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One build for all targets; the runs then start at once.
cargo +nightly fuzz build

for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    grown="target/corpus/$target"
    mkdir -p "$grown"
    # The first directory receives new inputs; the seeds after it are read only.
    cargo +nightly fuzz run "$target" "$grown" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1
done
echo "== no crash in ${#targets[@]} target(s), ${seconds}s each"
