#!/bin/sh
# make fuzz: every fuzz target (fuzz/fuzz_targets, bodies in src/fuzz.rs) under
# libFuzzer for FUZZ_SECONDS each (default 60), or only FUZZ_TARGETS="a b".
# cargo-fuzz runs on the stable toolchain with RUSTC_BOOTSTRAP=1 (it needs nightly
# flags for the sanitizer and coverage instrumentation); it is installed from
# crates.io when missing. The committed seeds (fuzz/corpus/<target>) are read, new
# inputs go to target/fuzz-corpus/<target> (kept between runs, not committed), and a
# failing input to fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ and
# it runs in every `make test` (tests/fuzz_corpus.rs). Ends with a table of the runs
# for docs/reliability.md. FUZZ_SANITIZER: address (default) or none (faster).
set -eu
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
targets=${FUZZ_TARGETS:-$(ls fuzz/fuzz_targets | sed 's/\.rs$//')}
export RUSTC_BOOTSTRAP=1
(cd fuzz && cargo fuzz build --fuzz-dir . -s "$sanitizer")
rows=""
failed=0
for t in $targets; do
  work=target/fuzz-corpus/$t
  mkdir -p "$work" "fuzz/artifacts/$t"
  log=target/fuzz-corpus/$t.log
  echo "fuzz: $t for ${seconds}s" >&2
  if (cd fuzz && cargo fuzz run --fuzz-dir . -s "$sanitizer" "$t" "../$work" "corpus/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
      -rss_limit_mb=2048) >"$log" 2>&1; then
    result="none"
  else
    result="FAILED: $(ls "fuzz/artifacts/$t" | head -1)"
    failed=1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corp=$(ls "$work" | wc -l)
  rows="$rows| $t | libFuzzer ($sanitizer) | ${runs:-?} | ${seconds} s | $corp | ${cov:-?} edges, ${ft:-?} features | $result |
"
done
echo
echo "| target | engine | executions | time | corpus | coverage | findings |"
echo "|---|---|---:|---:|---:|---|---|"
printf '%s' "$rows"
exit $failed
