#!/bin/bash
# lr.sh -- runs bench_lr (Left-Right) and bench_lr_rwlock (the same code
# with a rwlock) one after the other on the same machine and prints both
# figures and their ratio (left-right / rwlock) per metric.
# Usage: bash bench/lr.sh [bench_lr args, e.g. --n 1000000 --secs 3]
set -e
dir=$(dirname "$0")/../build
lr=$(mktemp); rw=$(mktemp)
"$dir/bench_lr" "$@" | tee "$lr" >&2
"$dir/bench_lr_rwlock" "$@" | tee "$rw" >&2
echo
printf '%-20s %14s %14s %8s\n' metric left-right rwlock ratio
join <(grep -E '^[a-z0-9_]+ [0-9.]+$' "$lr" | sort) <(grep -E '^[a-z0-9_]+ [0-9.]+$' "$rw" | sort) 2>/dev/null |
    awk '{ r = ($3 > 0) ? $2 / $3 : 0; printf "%-20s %14s %14s %8.2f\n", $1, $2, $3, r }'
rm -f "$lr" "$rw"
