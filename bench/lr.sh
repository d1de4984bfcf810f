#!/bin/bash
# lr.sh -- runs bench_lr (Left-Right) and bench_lr_rwlock (the same code
# with a rwlock) alternately, REPEAT times each (default 3), on the same
# machine, and prints per metric the median of each and their ratio
# (left-right / rwlock). Usage: REPEAT=3 bash bench/lr.sh [--n N] [--secs S]
set -e
dir=$(dirname "$0")/../build
repeat=${REPEAT:-3}
tmp=$(mktemp -d)
for i in $(seq "$repeat"); do
    "$dir/bench_lr" "$@" > "$tmp/lr.$i"
    "$dir/bench_lr_rwlock" "$@" > "$tmp/rw.$i"
done
head -n 2 "$tmp/lr.1"
echo "median of $repeat runs each, alternating"
median() { # variant metric
    cat "$tmp/$1".* | awk -v m="$2" '$1 == m { print $2 }' | sort -g |
        awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
printf '%-20s %14s %14s %8s\n' metric left-right rwlock ratio
for m in $(grep -E '^[a-z0-9_]+ [0-9.]+$' "$tmp/lr.1" | awk '{ print $1 }'); do
    a=$(median lr "$m"); b=$(median rw "$m")
    awk -v m="$m" -v a="$a" -v b="$b" 'BEGIN { printf "%-20s %14s %14s %8.2f\n", m, a, b, (b > 0) ? a / b : 0 }'
done
rm -rf "$tmp"
