#!/bin/sh
# test_server.sh [SERVER] -- kvidx-server under real clients (`make test-server`).
#
# SERVER is the kvidx-server binary (default build/kvidx-server; "redis"
# puts a redis-server in its place, to test this script alone: the
# kvidx-only checks then fail). Everything runs on 127.0.0.1, on free ports,
# with the databases in a scratch directory that is removed at the end;
# every server and proxy started here is stopped at the end, also on failure
# or interruption, and every client command runs under timeout(1).
#
# Cases (each prints "ok   <case>" or "FAIL <case>" with what disagreed):
#   server_start             kvidx-server --allow-flush answers PING
#   redis_cli_oneshot        redis-cli one command a run: SET GET SADD SMEMBERS SCAN
#                            INFO DBSIZE TYPE INCR MSET MGET DEL EXISTS and error replies
#   redis_cli_interactive    redis-cli at a pseudo-terminal (script(1), TERM=dumb)
#   redis_cli_pipe           redis-cli --pipe: 10,000 SET and SADD in RESP, no errors
#   restart_keeps_data       SIGTERM, start again on the same directory, the data is there
#   redis_benchmark          -t ping_inline,ping_mbulk,set,get,mset -r 100000 -n N -q
#   redis_benchmark_sadd     -r 100000 -n N SADD 42 __rand_int__; then SCARD 42 is about
#                            r(1 - e^(-n/r)) and SMEMBERS 42 is ascending
#   flushall_allowed         FLUSHALL with --allow-flush empties the database
#   redis_py.*               tests/test_redis_py.py model: redis-py against a model,
#                            on a fresh server without --allow-flush
#   nutcracker_config        nutcracker -t accepts examples/nutcracker.yml and this
#                            run's copy of it (the same file, this run's ports)
#   nutcracker.*             tests/test_redis_py.py proxy: 3 kvidx-servers behind
#                            nutcracker, 10,000 keys and 1,000 sets through the proxy
#   sigterm_exit_0           every kvidx-server stopped with SIGTERM exited 0 within 10 s
# Ends with "test_server: N passed, N failed"; exit 0 only if none failed.
#
# Environment: KVIDX_SERVER (SERVER when no argument is given; tests/run.sh
# runs this script without one), TEST_SERVER_BENCH_N (redis-benchmark -n, default 100000; use
# 20000 under a sanitizer), TEST_SERVER_THREADS (--threads, default 2),
# KVIDX_SEED (the redis-py seed; printed), TEST_SERVER_KEEP=1 (keep the
# scratch directory and the logs).
# Needs redis-tools, python3-redis and nutcracker (installed through
# tests/deps.sh if missing) and script(1) (bsdutils).

root=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-${KVIDX_SERVER:-build/kvidx-server}}
BENCH_N=${TEST_SERVER_BENCH_N:-100000}
THREADS=${TEST_SERVER_THREADS:-2}
PY=/usr/bin/python3   # python3-redis is in Debian's python only
T="timeout -k 5"      # every client command: $T SECONDS cmd ...
passed=0
failed=0
pids=""       # servers and proxies still running
stop_rcs=""   # "name:rc" of every server stopped with SIGTERM

sh "$root/tests/deps.sh" redis-tools:/usr/bin/redis-cli \
    python3-redis:/usr/lib/python3/dist-packages/redis/__init__.py \
    nutcracker:/usr/sbin/nutcracker || { echo "test_server: could not install the clients"; }

case "$BIN" in redis|/*) ;; *) BIN="$root/$BIN" ;; esac

work=$(mktemp -d "${TMPDIR:-/tmp}/kvidx-test-server.XXXXXX") || exit 1
probs="$work/problems"
: > "$probs"

cleanup() {
    rc=$?
    trap - EXIT HUP INT PIPE TERM
    for p in $pids; do kill -TERM "$p" 2>/dev/null; done
    for p in $pids; do
        i=0
        while [ $i -lt 50 ] && alive "$p"; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    if [ "${TEST_SERVER_KEEP:-0}" = 1 ]; then echo "test_server: kept $work"; else rm -rf "$work"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers

ok() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }
note() { echo "$*" >> "$probs"; }
# end a case: ok if nothing was noted since it began, else FAIL and the notes
case_end() {
    if [ -s "$probs" ]; then
        fail "$1"
        sed 's/^/     /' "$probs" | head -n 40
    else
        ok "$1"
    fi
    : > "$probs"
}

# true while the process runs (a zombie, one that exited and was not waited for, is not)
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
    [ -n "$st" ] && [ "$st" != Z ]
}

used_ports=""
free_port() {
    while :; do
        p=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        case " $used_ports " in *" $p "*) continue ;; esac
        used_ports="$used_ports $p"
        echo "$p"
        return
    done
}

pids_remove() {
    n=""
    for q in $pids; do [ "$q" = "$1" ] || n="$n $q"; done
    pids=$n
}

cli() { # port args... : redis-cli, one command
    p=$1
    shift
    $T 15 redis-cli -h 127.0.0.1 -p "$p" "$@" 2>&1
}

# start_server NAME DIR PORT [ARGS...]: sets srv_pid; 0 when it answers PING
start_server() {
    name=$1 dir=$2 port=$3
    shift 3
    mkdir -p "$dir"
    if [ "$BIN" = redis ]; then
        redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly yes \
            > "$work/$name.log" 2>&1 &
    else
        "$BIN" --dir "$dir" --port "$port" --bind 127.0.0.1 --threads "$THREADS" "$@" \
            > "$work/$name.log" 2>&1 &
    fi
    srv_pid=$!
    pids="$pids $srv_pid"
    i=0
    while [ $i -lt 150 ]; do
        [ "$($T 2 redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] && return 0
        if ! alive "$srv_pid"; then
            wait "$srv_pid"
            note "$name (port $port) exited with status $? before answering PING; its log:"
            tail -n 20 "$work/$name.log" | sed 's/^/  /' >> "$probs"
            pids_remove "$srv_pid"
            return 1
        fi
        sleep 0.1
        i=$((i + 1))
    done
    note "$name (port $port) did not answer PING within 15 s; its log:"
    tail -n 20 "$work/$name.log" | sed 's/^/  /' >> "$probs"
    return 1
}

# stop_server NAME PID: SIGTERM, up to 10 s, else SIGKILL; records the exit status
stop_server() {
    kill -TERM "$2" 2>/dev/null
    i=0
    while [ $i -lt 100 ] && alive "$2"; do sleep 0.1; i=$((i + 1)); done
    if alive "$2"; then
        kill -KILL "$2" 2>/dev/null
        wait "$2" 2>/dev/null
        stop_rcs="$stop_rcs $1:still-running-10s-after-SIGTERM(killed)"
    else
        wait "$2"
        stop_rcs="$stop_rcs $1:$?"
    fi
    pids_remove "$2"
}

# expect DESC GOT EXPECTED: notes a disagreement (newlines shown as |)
expect() {
    [ "$2" = "$3" ] && return 0
    g=$(printf '%s' "$2" | head -c 400 | tr '\r\n' '~|')
    e=$(printf '%s' "$3" | tr '\r\n' '~|')
    note "$1 -> reply '$g', expected '$e'"
}
# expect_has DESC GOT PATTERN: GOT has a line matching the ERE PATTERN
expect_has() {
    printf '%s\n' "$2" | grep -Eq -- "$3" && return 0
    g=$(printf '%s' "$2" | head -c 400 | tr '\r\n' '~|')
    note "$1 -> reply '$g', expected a line matching /$3/"
}

# run_py CASEPREFIX ARGS...: tests/test_redis_py.py, its ok/FAIL lines counted as cases
run_py() {
    out="$work/py.$1.out"
    shift
    $T 120 $PY "$root/tests/test_redis_py.py" "$@" > "$out" 2>&1
    prc=$?
    grep -v '^test_redis_py: [0-9]* passed, [0-9]* failed$' "$out"
    np=$(grep -c '^ok ' "$out")
    nf=$(grep -c '^FAIL ' "$out")
    passed=$((passed + np))
    failed=$((failed + nf))
    if ! grep -q '^test_redis_py: [0-9]* passed, [0-9]* failed$' "$out" || { [ $prc != 0 ] && [ "$nf" = 0 ]; }; then
        fail "test_redis_py.py $* (exit status $prc, no summary: crashed or timed out)"
    fi
}

start_time=$(date +%s)
echo "# test_server: server $BIN, threads $THREADS, redis-benchmark -n $BENCH_N, scratch $work"
for t in redis-cli redis-benchmark nutcracker script timeout; do
    command -v $t > /dev/null || echo "# test_server: $t not found"
done
if [ "$BIN" != redis ] && [ ! -x "$BIN" ]; then
    note "$BIN is missing: run 'make server' (or 'make test-server')"
    case_end server_start
    echo "test_server: $passed passed, $failed failed"
    exit 1
fi

# ---------------------------------------------------------------- server 1: redis-cli

P1=$(free_port)
if start_server s1 "$work/s1" "$P1" --allow-flush; then S1=$srv_pid; else S1=""; fi
case_end server_start
if [ -z "$S1" ]; then
    echo "test_server: $passed passed, $failed failed"
    exit 1
fi

# -- redis-cli, one command a run (stdout not a terminal: raw replies, nil as an empty line)
v300=$(printf '%300s' '' | tr ' ' x)
expect "PING" "$(cli $P1 ping)" "PONG"
expect "ECHO hello" "$(cli $P1 echo hello)" "hello"
expect "SET 1 a" "$(cli $P1 set 1 a)" "OK"
expect "GET 1" "$(cli $P1 get 1)" "a"
expect "GET 001 (the same key)" "$(cli $P1 get 001)" "a"
expect "SET 1 b NX" "$(cli $P1 set 1 b nx)" ""
expect "SET 1 <300 bytes>" "$(cli $P1 set 1 "$v300")" "ERR value exceeds 256 bytes"
expect "GET 1 (after the refused SET)" "$(cli $P1 get 1)" "a"
expect "SADD 7 3 1 2 001" "$(cli $P1 sadd 7 3 1 2 001)" "3"
expect "SMEMBERS 7" "$(cli $P1 smembers 7)" "$(printf '1\n2\n3')"
expect "SCARD 7" "$(cli $P1 scard 7)" "3"
expect "SISMEMBER 7 2" "$(cli $P1 sismember 7 2)" "1"
expect "SADD 7 abc" "$(cli $P1 sadd 7 abc)" "ERR member is not a decimal uint64 id: 'abc'"
expect "INCR 9" "$(cli $P1 incr 9)" "1"
expect "INCR 9" "$(cli $P1 incr 9)" "2"
expect "INCRBY 9 -5" "$(cli $P1 incrby 9 -5)" "-3"
expect "INCR 1 (holds a)" "$(cli $P1 incr 1)" "ERR value is not an integer or out of range"
expect "TYPE 1" "$(cli $P1 type 1)" "string"
expect "TYPE 7" "$(cli $P1 type 7)" "set"
expect "TYPE 8" "$(cli $P1 type 8)" "none"
expect "DBSIZE" "$(cli $P1 dbsize)" "3"
expect "SCAN 0" "$(cli $P1 scan 0)" "$(printf '0\n1\n7\n9')"
expect "SSCAN 7 0" "$(cli $P1 sscan 7 0)" "$(printf '0\n1\n2\n3')"
info=$(cli $P1 info)
expect_has "INFO" "$info" '^redis_version:'
expect_has "INFO" "$info" '^kvidx_version:'
expect_has "INFO" "$info" '^# Keyspace'
expect_has "INFO keyspace" "$(cli $P1 info keyspace)" '^db0:keys=3,expires=0,avg_ttl=0'
expect "MSET 10 x 11 y" "$(cli $P1 mset 10 x 11 y)" "OK"
expect "MGET 10 11 12" "$(cli $P1 mget 10 11 12)" "$(printf 'x\ny\n')"
expect "EXISTS 10 10 12" "$(cli $P1 exists 10 10 12)" "2"
expect "DEL 10 11 12" "$(cli $P1 del 10 11 12)" "2"
expect "GET" "$(cli $P1 get)" "ERR wrong number of arguments for 'get' command"
expect "SET 1 a EX 10" "$(cli $P1 set 1 a ex 10)" \
    "ERR SET option 'ex' is not supported: kvidx keys do not expire"
expect "SELECT 1" "$(cli $P1 select 1)" "ERR DB index is out of range"
expect "NOSUCH" "$(cli $P1 nosuch 1)" "ERR unknown command 'nosuch'"
expect "SCAN 0 MATCH a*" "$(cli $P1 scan 0 match 'a*')" "ERR MATCH patterns other than '*' are not supported"
expect "COMMAND DOCS (redis-cli asks at a tty)" "$(cli $P1 command docs)" ""
expect "CONFIG GET save" "$(cli $P1 config get save)" ""
expect "GET 1 (at the end)" "$(cli $P1 get 1)" "a"
case_end redis_cli_oneshot

# -- redis-cli at a pseudo-terminal: linenoise off (TERM=dumb), commands through a FIFO
# that stays open until redis-cli has quit (script(1) ends the session at EOF)
mkfifo "$work/tty.in"
(TERM=dumb $T 30 script -qec "redis-cli -h 127.0.0.1 -p $P1" /dev/null < "$work/tty.in" > "$work/tty.out" 2>&1;
    echo $? > "$work/tty.rc") &
tty_job=$!
exec 3> "$work/tty.in"
(trap '' PIPE; printf '%s\n' "set 5 hello" "get 5" "sadd 15 3 1 2" "smembers 15" "set 5 $v300" \
    "get 5" "type 15" "dbsize" "quit" >&3) 2> /dev/null
wait $tty_job
exec 3>&-
out=$(tr -d '\r' < "$work/tty.out")
expect "redis-cli at a tty: exit status" "$(cat "$work/tty.rc")" "0"
for pat in "^127\.0\.0\.1:$P1> " '^(127\.0\.0\.1:[0-9]+> )?OK$' '^(127\.0\.0\.1:[0-9]+> )?"hello"$' \
    '^(127\.0\.0\.1:[0-9]+> )?\(integer\) 3$' '^(127\.0\.0\.1:[0-9]+> )?1\) "1"$' '^2\) "2"$' '^3\) "3"$' \
    '^(127\.0\.0\.1:[0-9]+> )?\(error\) ERR value exceeds 256 bytes$' '^(127\.0\.0\.1:[0-9]+> )?set$' \
    '^(127\.0\.0\.1:[0-9]+> )?\(integer\) 5$'; do
    expect_has "redis-cli at a tty" "$out" "$pat"
done
n=$(printf '%s\n' "$out" | grep -c '"hello"')
expect "redis-cli at a tty: \"hello\" twice (GET before and after the refused SET)" "$n" "2"
if printf '%s\n' "$out" | grep -v 'value exceeds 256 bytes' | grep -q 'error'; then
    note "redis-cli at a tty: unexpected error: $(printf '%s\n' "$out" | grep -v 'value exceeds' | grep error | head -n 3 | tr '\n' '|')"
fi
case_end redis_cli_interactive

# -- redis-cli --pipe: 5,000 SET and 5,000 SADD in RESP (mass insertion)
$PY - > "$work/pipe.resp" << 'EOF'
import sys
out = sys.stdout.buffer
def cmd(*a):
    out.write(b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a))
for i in range(5000):
    cmd(b"SET", b"%d" % (100000 + i), b"v%d" % i)
    cmd(b"SADD", b"77", b"%d" % (i * 3))
EOF
pipe_out=$($T 60 redis-cli -h 127.0.0.1 -p "$P1" --pipe < "$work/pipe.resp" 2>&1)
expect_has "redis-cli --pipe (10000 commands)" "$pipe_out" '^errors: 0, replies: 10000$'
expect "GET 104999" "$(cli $P1 get 104999)" "v4999"
expect "SCARD 77" "$(cli $P1 scard 77)" "5000"
expect "DBSIZE" "$(cli $P1 dbsize)" "5006"
case_end redis_cli_pipe

# -- SIGTERM, start again on the same directory
stop_server s1 "$S1"
P1=$(free_port)
if start_server s1-again "$work/s1" "$P1" --allow-flush; then
    S1=$srv_pid
    expect "GET 1 after the restart" "$(cli $P1 get 1)" "a"
    expect "SMEMBERS 7 after the restart" "$(cli $P1 smembers 7)" "$(printf '1\n2\n3')"
    expect "GET 5 after the restart" "$(cli $P1 get 5)" "hello"
    expect "SCARD 77 after the restart" "$(cli $P1 scard 77)" "5000"
    expect "DBSIZE after the restart" "$(cli $P1 dbsize)" "5006"
else
    S1=""
fi
case_end restart_keeps_data

# ---------------------------------------------------------------- redis-benchmark

# bench NAME ARGS...: runs redis-benchmark -q; prints its result lines; notes errors
bench() {
    bname=$1
    shift
    $T 180 redis-benchmark -h 127.0.0.1 -p "$P1" -q "$@" > "$work/$bname.raw" 2>&1
    brc=$?
    tr '\r' '\n' < "$work/$bname.raw" | grep -v 'rps=' | grep -v '^ *$' > "$work/$bname.out"
    [ $brc = 0 ] || note "redis-benchmark $* exited with status $brc"
    # redis-benchmark exits at the first error reply ("Error from server: ...")
    if grep -Eiq 'err' "$work/$bname.out"; then
        note "redis-benchmark $*: error lines:"
        grep -Ei 'err' "$work/$bname.out" | head -n 5 | sed 's/^/  /' >> "$probs"
    fi
    sed 's/^/# /' "$work/$bname.out"
}
if [ -n "$S1" ]; then
    bench bench1 -t ping_inline,ping_mbulk,set,get,mset -r 100000 -n "$BENCH_N"
    for t in PING_INLINE PING_MBULK SET GET 'MSET \(10 keys\)'; do
        grep -Eq "^$t: [0-9.]+ requests per second" "$work/bench1.out" ||
            note "redis-benchmark: no result line for $t"
    done
    case_end redis_benchmark

    before=$(cli $P1 scard 42)
    bench bench2 -r 100000 -n "$BENCH_N" SADD 42 __rand_int__
    grep -Eq '^SADD 42 __rand_int__: [0-9.]+ requests per second' "$work/bench2.out" ||
        note "redis-benchmark: no result line for SADD 42 __rand_int__"
    # n draws from r ids: about r(1 - e^(-n/r)) distinct ones (a few hundred either way)
    n=$(cli $P1 scard 42)
    range=$($PY -c "import math; e = 100000 * (1 - math.exp(-$BENCH_N / 100000)); print(int(e * 0.97), int(e * 1.03) + 1, int(e))")
    set -- $range
    echo "# SCARD 42 after the SADD run: $n (before: $before; expected about $3)"
    case $n in
        '' | *[!0-9]*) note "SCARD 42: '$n', expected a number" ;;
        *) [ "$n" -ge "$1" ] && [ "$n" -le "$2" ] || note "SCARD 42: $n, expected $1..$2" ;;
    esac
    $T 30 redis-cli -h 127.0.0.1 -p "$P1" smembers 42 > "$work/smembers42" 2>&1
    sort -n -c "$work/smembers42" 2> /dev/null || note "SMEMBERS 42: not in ascending order"
    [ "$(sort -n -u "$work/smembers42" | wc -l)" = "$n" ] ||
        note "SMEMBERS 42: $(wc -l < "$work/smembers42") lines, $(sort -n -u "$work/smembers42" | wc -l) distinct, SCARD $n"
    case_end redis_benchmark_sadd

    expect "FLUSHALL (--allow-flush)" "$(cli $P1 flushall)" "OK"
    expect "DBSIZE after FLUSHALL" "$(cli $P1 dbsize)" "0"
    expect "SCAN 0 after FLUSHALL" "$(cli $P1 scan 0)" "0"
    expect "SCARD 42 after FLUSHALL" "$(cli $P1 scard 42)" "0"
    case_end flushall_allowed
    stop_server s1-again "$S1"
fi

# ---------------------------------------------------------------- redis-py against a model

P2=$(free_port)
if start_server s2 "$work/s2" "$P2"; then
    S2=$srv_pid
    : > "$probs"
    seed=${KVIDX_SEED:-}
    run_py model model --port "$P2" ${seed:+--seed "$seed"}
    stop_server s2 "$S2"
else
    case_end redis_py_server_start
fi

# ---------------------------------------------------------------- nutcracker

B1=$(free_port)
B2=$(free_port)
B3=$(free_port)
PX=$(free_port)
PXS=$(free_port)
sed -e "s/127\.0\.0\.1:22121/127.0.0.1:$PX/" -e "s/127\.0\.0\.1:6381:/127.0.0.1:$B1:/" \
    -e "s/127\.0\.0\.1:6382:/127.0.0.1:$B2:/" -e "s/127\.0\.0\.1:6383:/127.0.0.1:$B3:/" \
    "$root/examples/nutcracker.yml" > "$work/nutcracker.yml"
for f in "$root/examples/nutcracker.yml" "$work/nutcracker.yml"; do
    o=$($T 10 nutcracker -c "$f" -t 2>&1)
    expect_has "nutcracker -c $f -t" "$o" 'syntax is ok'
done
for b in $B1 $B2 $B3; do
    grep -q "127.0.0.1:$b:1" "$work/nutcracker.yml" || note "the copy of nutcracker.yml lacks the backend 127.0.0.1:$b"
done
grep -q "127.0.0.1:$PX\$" "$work/nutcracker.yml" || note "the copy of nutcracker.yml does not listen on $PX"
case_end nutcracker_config

be_ok=1
start_server b1 "$work/b1" "$B1" && SB1=$srv_pid || be_ok=0
start_server b2 "$work/b2" "$B2" && SB2=$srv_pid || be_ok=0
start_server b3 "$work/b3" "$B3" && SB3=$srv_pid || be_ok=0
nutcracker -c "$work/nutcracker.yml" -s "$PXS" -a 127.0.0.1 -o "$work/nutcracker.log" -v 5 &
NC=$!
pids="$pids $NC"
i=0
until [ "$($T 2 redis-cli -h 127.0.0.1 -p "$PX" ping 2>/dev/null)" = PONG ]; do
    i=$((i + 1))
    if [ $i -ge 100 ] || ! alive $NC; then
        note "nutcracker on $PX did not answer PING; its log:"
        tail -n 20 "$work/nutcracker.log" | sed 's/^/  /' >> "$probs"
        be_ok=0
        break
    fi
    sleep 0.1
done
case_end nutcracker_start
if [ $be_ok = 1 ]; then
    run_py proxy proxy --port "$PX" --backends "$B1,$B2,$B3" ${seed:+--seed "$seed"}
    # nutcracker's own words on what it refused
    grep -E 'unsupported command' "$work/nutcracker.log" | sed 's/^/# nutcracker.log: /' | head -n 10
fi
kill -TERM $NC 2>/dev/null
i=0
while [ $i -lt 50 ] && alive $NC; do sleep 0.1; i=$((i + 1)); done
kill -KILL $NC 2>/dev/null
wait $NC 2>/dev/null
pids_remove $NC
[ -n "${SB1:-}" ] && stop_server b1 "$SB1"
[ -n "${SB2:-}" ] && stop_server b2 "$SB2"
[ -n "${SB3:-}" ] && stop_server b3 "$SB3"

# ---------------------------------------------------------------- SIGTERM

echo "# exit status after SIGTERM:$stop_rcs"
for r in $stop_rcs; do
    case $r in
        *:0) ;;
        *) note "${r%%:*}: exit status ${r#*:} after SIGTERM, expected 0 (log: $(tail -n 3 "$work/${r%%:*}.log" 2>/dev/null | tr '\n' '|'))" ;;
    esac
done
[ -n "$stop_rcs" ] || note "no server was stopped"
case_end sigterm_exit_0

echo "# test_server: $(($(date +%s) - start_time)) s"
echo "test_server: $passed passed, $failed failed"
[ $failed = 0 ]
