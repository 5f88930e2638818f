#!/bin/sh
# Prints what `mews-relay check` says (exit code, stderr, stdout) for every config fixture and
# shipped example, to compare two builds: scripts/check-fixtures.sh > before.txt; … ; diff.
set -u
bin=${1:-target/debug/mews-relay}
for f in tests/fixtures/config/valid/*.toml tests/fixtures/config/invalid/*.toml config/*.toml; do
    out=$("$bin" check --config "$f" 2>/tmp/check-fixtures.err)
    code=$?
    printf '== %s: exit %s\n%s\n%s\n' "$f" "$code" "$(cat /tmp/check-fixtures.err)" "$out"
done
