#!/bin/sh
# run.sh BIN... -- runs each test program, shows its output, and ends with
# the total "N passed, N failed" over all of them (test cases; a program
# that crashes or prints no summary counts as one failure). Each program
# runs under timeout(1): a hang the in-test watchdog cannot catch (one
# inside the library under a sanitizer) fails the run instead of stalling
# it; KVIDX_TEST_TIMEOUT sets the limit in seconds (default 1200).
passed=0; failed=0
for t in "$@"; do
    out=$(mktemp)
    { timeout -k 10 "${KVIDX_TEST_TIMEOUT:-1200}" "$t" 2>&1; echo $? > "$out.rc"; } | tee "$out"
    rc=$(cat "$out.rc"); rm -f "$out.rc"
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "run.sh: $t timed out (limit ${KVIDX_TEST_TIMEOUT:-1200} s) or was killed"
    line=$(grep -E '^[^ ]*: [0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
    rm -f "$out"
    if [ -z "$line" ]; then
        echo "run.sh: $t printed no summary (crashed?)"; failed=$((failed + 1)); continue
    fi
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/')
    f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
    [ "$rc" = 0 ] || [ "$f" -gt 0 ] || { echo "run.sh: $t exited $rc"; f=1; }
    passed=$((passed + p)); failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
