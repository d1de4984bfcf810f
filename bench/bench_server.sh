#!/bin/bash
# bench_server.sh -- kvidx-server against redis-server under redis-benchmark
# (`make bench-server`; a few minutes at the default N).
#
# Starts build/kvidx-server (its default persistence, one thread per CPU)
# and redis-server (appendonly yes, appendfsync everysec, no RDB saves)
# on 127.0.0.1, each on a free port with its files in a scratch directory
# under bench/data/server (removed at the end), and runs the same
# redis-benchmark commands against each, without and with -P 16:
#   SET, GET          -t set / -t get, keys key:<12 digits> (-r 100000)
#   MSET              -t mset (10 keys a request, same keys)
#   SADD              SADD 42 __rand_int__ (decimal members, -r 100000)
#   SMEMBERS          SMEMBERS 4242, a set pre-filled with 100 members
# -n N requests (default 100000), -c 50 clients. The order alternates per
# measurement (kvidx first, then redis first, ...) so that drift favours
# neither. Afterwards it checks what both hold: the same values for a
# sample of keys, 100 members in SMEMBERS, comparable SCARD and DBSIZE.
#
# Environment: N (requests a run, default 100000), CLIENTS (-c, default
# 50), RANGE (-r, default 100000), REPEAT (runs of each measurement, the
# order alternating; the table shows the medians; default 1), KVIDX_THREADS (--threads for
# kvidx-server; default: its own default, one per CPU), BENCH_TIMEOUT
# (seconds a redis-benchmark run may take, default 600),
# KVIDX_SERVER (the binary, default build/kvidx-server; "redis" puts a
# second redis-server in kvidx's place, to test this script alone).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-100000}
CLIENTS=${CLIENTS:-50}
RANGE=${RANGE:-100000}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
REPEAT=${REPEAT:-1}
KVIDX_SERVER=${KVIDX_SERVER:-$root/build/kvidx-server}
SET_KEY=4242   # the SMEMBERS set
SADD_KEY=42    # the SADD set

die() { echo "bench_server: $*" >&2; exit 1; }

sh "$root/tests/deps.sh" redis-server:/usr/bin/redis-server redis-tools:/usr/bin/redis-benchmark
for t in redis-server redis-benchmark redis-cli timeout; do
    command -v "$t" >/dev/null || die "$t not found"
done
if [ "$KVIDX_SERVER" != redis ]; then
    [ -x "$KVIDX_SERVER" ] || die "$KVIDX_SERVER missing: run 'make server' (or make bench-server)"
fi

mkdir -p "$root/bench/data/server"
data=$(mktemp -d "$root/bench/data/server/run.XXXXXX")
declare -A pid=() port=() # by server name: kvidx, redis
bench_pid=""

stop() { # pid: SIGTERM, up to 10 s, then SIGKILL
    local id=$1 i
    [ -n "$id" ] || return 0
    kill -TERM "$id" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$id" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$id" 2>/dev/null || true
    wait "$id" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop "$bench_pid"
    stop "${pid[kvidx]:-}"
    stop "${pid[redis]:-}"
    rm -rf "$data"
    rmdir "$root/bench/data/server" 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A port nothing listens on now: a random one below the kernel's range
# for outgoing connections (so that redis-benchmark's sockets never hold
# it), checked by connecting. A server's own bind failure is caught by
# start() below, which tries another.
free_port() {
    local p i lo=32768
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
    [ "$lo" -gt 12000 ] || lo=32768
    for i in $(seq 50); do
        p=$((10000 + RANDOM % (lo - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    die "no free port found"
}

# Waits until the server on port $2 (pid $1) answers PING; 20 s at most.
wait_ping() {
    local id=$1 p=$2 i
    for i in $(seq 200); do
        kill -0 "$id" 2>/dev/null || return 1
        [ "$(redis-cli -p "$p" PING 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    return 1
}

# start NAME: starts that server (3 tries at different ports); sets
# pid[NAME] and port[NAME].
start() {
    local name=$1 try p id dir log
    for try in 1 2 3; do
        p=$(free_port)
        dir="$data/$name"
        log="$data/$name.log"
        mkdir -p "$dir" # kvidx creates its database in an empty directory
        if [ "$name" = kvidx ] && [ "$KVIDX_SERVER" != redis ]; then
            local threads=()
            [ -n "${KVIDX_THREADS:-}" ] && threads=(--threads "$KVIDX_THREADS")
            "$KVIDX_SERVER" --dir "$dir" --port "$p" --bind 127.0.0.1 "${threads[@]}" >"$log" 2>&1 &
        else
            redis-server --port "$p" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly yes \
                --appendfsync everysec --protected-mode no --daemonize no >"$log" 2>&1 &
        fi
        id=$!
        if wait_ping "$id" "$p"; then
            pid[$name]=$id port[$name]=$p
            return 0
        fi
        echo "bench_server: $name did not start on port $p (try $try):" >&2
        tail -n 5 "$log" >&2 || true
        stop "$id"
        rm -rf "$dir"
    done
    die "$name would not start"
}

# ---- machine and servers -------------------------------------------------

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "== kvidx-server against redis-server (redis-benchmark) =="
echo "date:      $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine:   $(nproc) CPUs, ${cpu:-unknown CPU}, $(uname -sr)"
echo "loadavg:   $(cut -d' ' -f1-3 /proc/loadavg)"
echo "memory:    $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"

start kvidx
start redis

kvidx_ver=$(redis-cli -p "${port[kvidx]}" INFO server | tr -d '\r' | sed -n 's/^kvidx_version://p')
redis_ver=$(redis-cli -p "${port[redis]}" INFO server | tr -d '\r' | sed -n 's/^redis_version://p')
if [ "$KVIDX_SERVER" = redis ]; then
    echo "kvidx:     (KVIDX_SERVER=redis: a second redis-server stands in for kvidx-server)"
else
    echo "kvidx:     kvidx-server ${kvidx_ver:-?} on 127.0.0.1:${port[kvidx]}, --dir in bench/data/server, default" \
         "persistence (no --sync: kvidx's background sync every 1000 ms, as appendfsync everysec)," \
         "threads: ${KVIDX_THREADS:-default (one per CPU: $(nproc))}"
    echo "           its log: $(head -n 1 "$data/kvidx.log")"
fi
echo "redis:     redis-server $redis_ver on 127.0.0.1:${port[redis]}, appendonly yes, appendfsync everysec," \
     "save \"\"; single-threaded (one event loop)"
echo "client:    redis-benchmark, same machine: -n $N -c $CLIENTS, -r $RANGE for keys and members; it" \
     "shares the $(nproc) CPUs with the server it measures"
echo "order:     alternating per run (kvidx first, then redis first, ...); $REPEAT run(s) each," \
     "$([ "$REPEAT" = 1 ] && echo "req/s of the one run" || echo "median req/s")"
echo

# ---- the runs ------------------------------------------------------------

# The set SMEMBERS reads: 100 members on both.
for name in kvidx redis; do
    redis-cli -p "${port[$name]}" DEL "$SET_KEY" >/dev/null
    # shellcheck disable=SC2046
    got=$(redis-cli -p "${port[$name]}" SADD "$SET_KEY" $(seq 1 100))
    [ "$got" = 100 ] || die "$name: SADD of the 100-member set answered '$got'"
done

# label|redis-benchmark arguments (after the common ones)
runs=(
    "SET|-t set"
    "GET|-t get"
    "MSET (10 keys)|-t mset"
    "SADD $SADD_KEY __rand_int__|SADD $SADD_KEY __rand_int__"
    "SMEMBERS (100)|SMEMBERS $SET_KEY"
)

# bench NAME PIPELINE ARGS...: sets rps to the requests per second.
# redis-benchmark runs in the background and the shell waits for it with
# `wait`, which a signal interrupts: the traps run at once.
bench() {
    local name=$1 pipe=$2
    shift 2
    timeout "$BENCH_TIMEOUT" redis-benchmark -h 127.0.0.1 -p "${port[$name]}" -n "$N" -c "$CLIENTS" -r "$RANGE" \
        -P "$pipe" -q --csv "$@" >"$data/bench.out" 2>"$data/bench.err" &
    bench_pid=$!
    wait "$bench_pid" || { cat "$data/bench.err" >&2; die "$name: redis-benchmark $* -P $pipe failed or timed out"; }
    bench_pid=""
    rps=$(awk -F'","' 'NR > 1 && NF >= 2 { print $2; exit }' "$data/bench.out")
    [ -n "$rps" ] || { cat "$data/bench.out" >&2; die "$name: no result from redis-benchmark $*"; }
    # an error reply: redis-benchmark prints "Error from server: ..."
    if grep -q 'Error' "$data/bench.err"; then
        cat "$data/bench.err" >&2
        die "$name: redis-benchmark $* saw errors"
    fi
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

results=()
i=0
for pipe in 1 16; do
    for r in "${runs[@]}"; do
        label=${r%%|*}
        read -r -a args <<<"${r#*|}"
        ks=() rs=()
        for _ in $(seq "$REPEAT"); do
            if [ $((i % 2)) = 0 ]; then
                bench kvidx "$pipe" "${args[@]}"; ks+=("$rps")
                bench redis "$pipe" "${args[@]}"; rs+=("$rps")
            else
                bench redis "$pipe" "${args[@]}"; rs+=("$rps")
                bench kvidx "$pipe" "${args[@]}"; ks+=("$rps")
            fi
            i=$((i + 1))
        done
        k=$(median "${ks[@]}") rd=$(median "${rs[@]}")
        results+=("$label|$pipe|$k|$rd")
        printf '  done: %-22s -P %-2s kvidx %12s  redis %12s (%s)\n' "$label" "$pipe" "$k" "$rd" \
            "$([ "$REPEAT" = 1 ] && echo "one run" || echo "median of $REPEAT")" >&2
    done
done

printf '%-22s %8s %14s %14s %12s\n' command pipeline "kvidx req/s" "redis req/s" "kvidx/redis"
for row in "${results[@]}"; do
    IFS='|' read -r label pipe k rd <<<"$row"
    awk -v l="$label" -v p="$pipe" -v k="$k" -v r="$rd" \
        'BEGIN { printf "%-22s %8s %14.0f %14.0f %12.2f\n", l, p, k, r, (r > 0) ? k / r : 0 }'
done
echo

# ---- what was stored -----------------------------------------------------

echo "checks:"
fail=0
check() { # description, ok (0/1)
    if [ "$2" = 1 ]; then echo "  ok    $1"; else echo "  FAIL  $1"; fail=1; fi
}
# A sample of 100 keys SET/MSET wrote: after N SETs and 10 N MSET keys
# over $RANGE keys nearly every one exists (at the default N all of them),
# and each holds redis-benchmark's 3-byte value, the same bytes on both.
sample=()
for j in $(seq 0 99); do sample+=("$(printf 'key:%012d' $((j * (RANGE / 100))))"); done
declare -A v3=() get42=() mem=() scard=() dbsize=() type=()
for name in kvidx redis; do
    cli=(redis-cli -p "${port[$name]}")
    "${cli[@]}" MGET "${sample[@]}" >"$data/$name.mget"
    v3[$name]=$(grep -c . "$data/$name.mget" || true)
    get42[$name]=$("${cli[@]}" GET key:000000000042)
    mem[$name]=$("${cli[@]}" SMEMBERS "$SET_KEY" | sort -n | tr '\n' ' ')
    scard[$name]=$("${cli[@]}" SCARD "$SADD_KEY")
    dbsize[$name]=$("${cli[@]}" DBSIZE)
    type[$name]=$("${cli[@]}" TYPE "$SET_KEY")
done
expect_mem="$(seq 1 100 | tr '\n' ' ')"
check "GET key:000000000042: kvidx '${get42[kvidx]}', redis '${get42[redis]}'" \
      "$([ "${get42[kvidx]}" = "${get42[redis]}" ] && [ ${#get42[kvidx]} = 3 ] && echo 1 || echo 0)"
values=$(cat "$data/kvidx.mget" "$data/redis.mget" | grep -v '^$' | sort -u | tr '\n' ' ')
check "MGET of 100 sampled keys: a value in ${v3[kvidx]} on kvidx, ${v3[redis]} on redis; values seen: $values" \
      "$([ "${v3[kvidx]}" -ge 90 ] && [ "${v3[redis]}" -ge 90 ] && [ "$(echo "$values" | wc -w)" = 1 ] &&
          [ "$values" = "${get42[redis]} " ] && echo 1 || echo 0)"
check "SMEMBERS $SET_KEY: 1..100 on both ($(echo "${mem[kvidx]}" | wc -w) and $(echo "${mem[redis]}" | wc -w) members)" \
      "$([ "${mem[kvidx]}" = "$expect_mem" ] && [ "${mem[redis]}" = "$expect_mem" ] && echo 1 || echo 0)"
check "TYPE $SET_KEY: kvidx ${type[kvidx]}, redis ${type[redis]}" \
      "$([ "${type[kvidx]}" = set ] && [ "${type[redis]}" = set ] && echo 1 || echo 0)"
# SADD drew 2N random members of $RANGE on each: counts close, not equal
within() { # a b: 1 if both > 0 and within 2% of each other
    awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; print (a > 0 && b > 0 && d <= 0.02 * b) ? 1 : 0 }'
}
check "SCARD $SADD_KEY (random members): kvidx ${scard[kvidx]}, redis ${scard[redis]} (within 2%)" \
      "$(within "${scard[kvidx]}" "${scard[redis]}")"
check "DBSIZE: kvidx ${dbsize[kvidx]}, redis ${dbsize[redis]} (within 2%)" \
      "$(within "${dbsize[kvidx]}" "${dbsize[redis]}")"
for name in kvidx redis; do
    kill -0 "${pid[$name]}" 2>/dev/null || check "$name server still running" 0
done
echo "loadavg at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$fail" = 0 ] || die "a check failed"
