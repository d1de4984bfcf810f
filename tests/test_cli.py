#!/usr/bin/python3
"""test_cli.py -- the kvidx command-line tool (examples/cli.c), end to end.

Runs the binary (KVIDX_CLI, default build/kvidx) as a user would, against a
reference model (a dict of values and a dict of id sets), and checks every
byte it prints and every exit code:

  help              --help, help COMMAND, COMMAND --help, unknown commands
  values_model      random put (argument, stdin, --hex), get, del, scan
                    (ranges, --limit, escaped and --hex output) against the model
  lists_model       random list-add (arguments, stdin), list-remove, list-del,
                    list-get (--from, --limit), list-count, list-scan
  bad_input         bad keys, a 257-byte value, bad hex, unknown options,
                    missing keys: the exit code, the message, nothing stored
  not_a_database    open errors carry kvidx_strerror's text (exit 3)
  locked            a reader meets a writer's lock: exit 3, "open elsewhere"
  stat              stat and stat --json and --shard agree with what was written
  dump_load         dump | load into a fresh directory: the same dump byte for
                    byte, the model's data, the shard count; long lists split
  load_rejects      cut-short dumps, wrong counts, bad base64, unknown fields;
                    hand-written lines without a header are accepted
  check             a sound database: exit 0; a flipped byte in a value: exit 1,
                    with the shard named
  compact           compaction keeps the data and clears the garbage; on a
                    terminal it draws its progress on stderr
  backup            the copy dumps the same and passes check; a non-empty
                    destination is refused

Prints its seed (KVIDX_SEED replays) and ends with
"test_cli: N passed, N failed"; exit 0 only if none failed.
"""
import json
import os
import pty
import random
import re
import select
import shutil
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.abspath(os.environ.get("KVIDX_CLI") or os.path.join(ROOT, "build", "kvidx"))
TMP = os.path.abspath(os.path.join(os.environ.get("KVIDX_TEST_DIR") or os.path.join(ROOT, "tests", "tmp"), "cli"))
SEED = int(os.environ.get("KVIDX_SEED") or int(time.time() * 1000) % 1000000007)
U64 = 2**64 - 1
rng = random.Random(SEED)


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def run(*args, stdin=b"", code=0):
    """Runs the CLI; checks its exit code; returns (stdout bytes, stderr text)."""
    p = subprocess.run([CLI] + [str(a) for a in args], input=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    err = p.stderr.decode(errors="replace")
    if code is not None and p.returncode != code:
        raise Fail("kvidx %s: exit %d, expected %d; stderr: %s" % (
            " ".join(str(a) for a in args)[:200], p.returncode, code, err.strip()[:500]))
    return p.stdout, err


def fresh(name):
    d = os.path.join(TMP, name)
    shutil.rmtree(d, ignore_errors=True)
    return d


def unescape(s):
    """The inverse of scan's escaping: \\\\ and \\xNN."""
    out, i = bytearray(), 0
    while i < len(s):
        if s[i] == "\\":
            if s[i + 1] == "\\":
                out.append(0x5C)
                i += 2
            else:
                check(s[i + 1] == "x", "scan: a bad escape in %r" % s)
                out.append(int(s[i + 2:i + 4], 16))
                i += 4
        else:
            out.append(ord(s[i]))
            i += 1
    return bytes(out)


def rand_key():
    r = rng.random()
    if r < 0.1:
        return rng.choice([0, 1, U64, U64 - 1, 2**63])
    return rng.randrange(0, 300) if r < 0.8 else rng.randrange(0, 2**64)


def rand_value():
    n = rng.choice([0, 1, 2, 3, 17, 255, 256, rng.randrange(0, 257)])
    if rng.random() < 0.3:
        return bytes(rng.choice(b"abcdefghij -_=.,:;") for _ in range(n))
    return bytes(rng.randrange(256) for _ in range(n))


def scan_model(model, lo=0, hi=U64, limit=None):
    ks = sorted(k for k in model if lo <= k <= hi)
    return ks if limit is None else ks[:limit]


def parse_scan(out, hexed=False):
    got = []
    for line in out.decode("ascii").splitlines():
        k, v = line.split("\t")
        got.append((int(k), bytes.fromhex(v) if hexed else unescape(v)))
    return got


def verify_values(d, model):
    got = parse_scan(run("scan", d)[0])
    check(got == [(k, model[k]) for k in sorted(model)],
          "scan disagrees with the model (%d keys against %d)" % (len(got), len(model)))


def verify_lists(d, lists):
    out = run("list-scan", d)[0].decode()
    got = [tuple(map(int, l.split("\t"))) for l in out.splitlines()]
    check(got == [(k, len(lists[k])) for k in sorted(lists)], "list-scan disagrees with the model")
    for k in rng.sample(sorted(lists), min(len(lists), 10)):
        ids = [int(x) for x in run("list-get", d, k)[0].split()]
        check(ids == sorted(lists[k]), "list-get %d disagrees with the model" % k)


# ---- cases -----------------------------------------------------------------

def t_help():
    out, _ = run("--help")
    cmds = ["get", "put", "del", "scan", "list-get", "list-add", "list-remove", "list-count",
            "list-del", "list-scan", "stat", "check", "compact", "backup", "dump", "load"]
    for c in cmds:
        check(("kvidx " + c + " ") in out.decode() or ("kvidx " + c + "\n") in out.decode(),
              "--help does not list " + c)
        a, _ = run("help", c)
        b, _ = run(c, "--help")
        check(a == b and a.startswith(b"usage: kvidx " + c.encode() + b" "), "help %s: %r" % (c, a[:80]))
    _, err = run("frobnicate", code=2)
    check("no command" in err, "unknown command: " + err)
    run(code=2)
    out, _ = run("--version")
    check(re.match(rb"kvidx \d+\.\d+\.\d+\n$", out), "--version: %r" % out)
    _, err = run("help", "nope", code=2)


def t_values_model():
    d = fresh("values")
    model = {}
    run("put", d, 999, "x")  # the database exists before the first read
    run("del", d, 999)
    for step in range(250):
        op = rng.random()
        k = rand_key()
        if op < 0.45:
            v = rand_value()
            how = rng.choice(["stdin", "dash", "hex", "hexstdin", "arg"])
            if how == "arg" and (b"\0" in v or not v or v[:1] == b"-" or any(c >= 0x80 for c in v)):
                how = "stdin"
            if how == "stdin":
                run("put", d, k, stdin=v)
            elif how == "dash":
                run("put", d, k, "-", stdin=v)
            elif how == "hex":
                run("put", d, k, v.hex(), "--hex")
            elif how == "hexstdin":
                spaced = " ".join(v[i:i + 1].hex() for i in range(len(v))) + "\n"
                run("put", "--hex", d, k, stdin=spaced.encode())
            else:
                run("put", d, k, v.decode("latin-1"))
            model[k] = v
        elif op < 0.6:
            if k in model or rng.random() < 0.5:
                run("del", d, k, code=0 if k in model else 1)
                model.pop(k, None)
        elif op < 0.85:
            if k in model:
                out, _ = run("get", d, k)
                check(out == model[k], "get %d: %r, model %r" % (k, out, model[k]))
                out, _ = run("get", d, k, "--hex")
                check(out == model[k].hex().encode() + b"\n", "get --hex %d" % k)
            else:
                out, err = run("get", d, k, code=1)
                check(out == b"" and "not found" in err, "get of a missing key: %r %r" % (out, err))
        else:
            lo = rng.randrange(0, 300)
            hi = rng.choice([lo + rng.randrange(0, 100), U64])
            limit = rng.choice([None, 0, 1, 5])
            args = ["scan", d, lo, hi] + (["--limit", limit] if limit is not None else [])
            hexed = rng.random() < 0.3
            out, _ = run(*(args + (["--hex"] if hexed else [])))
            want = [(k2, model[k2]) for k2 in scan_model(model, lo, hi, limit)]
            check(parse_scan(out, hexed) == want, "scan %d %d limit %s" % (lo, hi, limit))
    # several keys at once; one missing: exit 1, the others are deleted
    ks = [k for k in sorted(model)][:3]
    if ks:
        run("del", d, *(ks + [12345678901]), code=1)
        for k in ks:
            model.pop(k)
    verify_values(d, model)
    # every byte value, and the longest value
    allb = bytes(range(256))
    run("put", d, 77, stdin=allb)
    check(run("get", d, 77)[0] == allb, "256 distinct bytes do not round-trip")
    model[77] = allb
    verify_values(d, model)


def t_lists_model():
    d = fresh("lists")
    lists = {}
    run("list-add", d, 999, 1)  # the database exists before the first read
    run("list-del", d, 999)
    for step in range(200):
        op = rng.random()
        k = rng.randrange(0, 40) if rng.random() < 0.9 else rng.choice([U64, 0, 2**63])
        if op < 0.4:
            ids = [rng.choice([rng.randrange(0, 1000), rng.randrange(0, 2**64), U64, 0])
                   for _ in range(rng.randrange(0, 30))]
            if ids and rng.random() < 0.5:
                out, _ = run("list-add", d, k, *ids)
            else:
                out, _ = run("list-add", d, k, stdin=" \n".join(map(str, ids)).encode())
            s = lists.setdefault(k, set())
            new = len(set(ids) - s)
            s.update(ids)
            if not s:
                del lists[k]
            check(out == b"%d\n" % new, "list-add printed %r, model %d" % (out, new))
        elif op < 0.55:
            s = lists.get(k, set())
            ids = rng.sample(sorted(s), min(len(s), 3)) + [rng.randrange(0, 1000)]
            out, _ = run("list-remove", d, k, *ids, code=0 if k in lists else 1)
            gone = len(s & set(ids))
            check(out == b"%d\n" % gone, "list-remove printed %r, model %d" % (out, gone))
            s.difference_update(ids)
            if k in lists and not s:
                del lists[k]
        elif op < 0.6:
            run("list-del", d, k, code=0 if k in lists else 1)
            lists.pop(k, None)
        elif op < 0.8:
            frm = rng.choice([0, rng.randrange(0, 1000)])
            limit = rng.choice([None, 0, 1, 3])
            args = ["list-get", d, k, "--from", frm] + (["--limit", limit] if limit is not None else [])
            out, _ = run(*args, code=0 if k in lists else 1)
            want = [i for i in sorted(lists.get(k, ())) if i >= frm]
            if limit is not None:
                want = want[:limit]
            check([int(x) for x in out.split()] == want, "list-get %d from %d limit %s" % (k, frm, limit))
        else:
            out, _ = run("list-count", d, k, code=0 if k in lists else 1)
            check(out == b"%d\n" % len(lists.get(k, ())), "list-count %d: %r" % (k, out))
    verify_lists(d, lists)
    out = run("list-scan", d, 5, 20, "--limit", 2)[0].decode()
    want = [(k, len(lists[k])) for k in sorted(lists) if 5 <= k <= 20][:2]
    check([tuple(map(int, l.split("\t"))) for l in out.splitlines()] == want, "list-scan 5 20 --limit 2")


def t_bad_input():
    d = fresh("bad")
    run("put", d, 1, "one")
    run("list-add", d, 9, 1, 2, 3)
    before = run("dump", d)[0]
    cases = [
        (["get", d, "x"], "bad KEY"), (["get", d, "-1"], "bad KEY"),
        (["get", d, "18446744073709551616"], "bad KEY"), (["put", d, "1", "zz", "--hex"], "not hex"),
        (["put", d, "1", "abc", "--hex"], "not hex"), (["put", d, "1", "a", "--bogus"], "unknown option"),
        (["scan", d, "5", "4"], "FROM is above TO"), (["scan", d, "--limit"], "decimal number"),
        (["list-add", d, "1", "2", "x"], "bad ID"), (["put", d, "1", "x" * 257], "longer than 256"),
        (["put", d, "1", "--hex", "00" * 257], "longer than 256"), (["get", d], "usage"),
        (["put", "--shards", "3", d + "2", "1", "x"], "power of two"),
    ]
    for args, msg in cases:
        _, err = run(*args, code=2)
        check(msg in err, "kvidx %s: stderr %r lacks %r" % (" ".join(args[:1] + args[2:]), err, msg))
    _, err = run("list-add", d, 1, stdin=b"1 2 x", code=2)
    check("bad ID 'x'" in err, "a bad id on stdin: " + err)
    _, err = run("list-add", d, 1, stdin=b"1 " + b"9" * 40, code=2)
    check("too long" in err, "a 40-digit id on stdin: " + err)
    _, err = run("load", d, os.path.join(TMP, "no-such-file"), code=2)
    check("No such file" in err, "load of a missing file: " + err)
    for cmd in (["dump", d], ["scan", d], ["list-get", d, 9]):
        with open("/dev/full", "wb") as full:  # output that cannot be written is exit 3
            p = subprocess.run([CLI] + [str(a) for a in cmd], stdout=full, stderr=subprocess.PIPE, timeout=60)
        check(p.returncode == 3 and b"writing the output" in p.stderr,
              "%s > /dev/full: exit %d, %r" % (cmd[0], p.returncode, p.stderr))
    _, err = run("put", d, 1, stdin=b"x" * 257, code=2)
    check("longer than 256 bytes" in err and "out of range" in err, "257 bytes on stdin: " + err)
    check(run("dump", d)[0] == before, "a refused command changed the database")
    check(not os.path.exists(d + "2"), "a refused put created its directory")
    # -- ends the options: a value that starts with --
    run("put", d, 2, "--", "--not-an-option")
    check(run("get", d, 2)[0] == b"--not-an-option", "-- did not end the options")


def t_not_a_database():
    d = fresh("notdb")
    os.makedirs(d)
    open(os.path.join(d, "something"), "w").write("x")
    _, err = run("get", d, 1, code=3)
    check("invalid argument" in err or "not a kvidx" in err or "EINVAL" in err or "argument" in err,
          "open of a non-database: " + err)
    _, err = run("get", fresh("missing"), 1, code=3)
    check("no such directory" in err, "open of a missing directory: " + err)
    _, err = run("del", fresh("missing2"), 1, code=3)
    check(not os.path.exists(os.path.join(TMP, "missing2")), "del created a database")


def t_locked():
    d = fresh("locked")
    run("put", d, 1, "x")
    p = subprocess.Popen([CLI, "load", d], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        p.stdin.write(b'{"key":5,"value":"aGk="}\n')
        p.stdin.flush()
        deadline = time.time() + 20
        while not holds_lock(p.pid):  # watched in /proc: a reader here would race load's open
            check(p.poll() is None, "load exited %s before it took the lock" % p.returncode)
            check(time.time() < deadline, "load never took the lock")
            time.sleep(0.02)
        _, err = run("get", d, 1, code=3)
        check("open elsewhere" in err, err)
        out, err = run("check", d, code=3)  # check cannot run beside a writer: no verdict
        check(out == b"" and "open elsewhere" in err, "check beside a writer: %r %r" % (out, err))
    finally:
        p.stdin.close()
        p.wait(timeout=60)
    check(p.returncode == 0, "the load holding the lock exited %d" % p.returncode)
    check(run("get", d, 5)[0] == b"hi", "the value load read while holding the lock")


def holds_lock(pid):
    fds = "/proc/%d/fd" % pid
    for f in os.listdir(fds):
        try:
            if os.readlink(os.path.join(fds, f)).endswith("/kvidx.lock"):
                return "FLOCK" in open("/proc/%d/fdinfo/%s" % (pid, f)).read()  # taken, not just opened
        except OSError:
            pass
    return False


def stat_json(d, *extra):
    out, _ = run("stat", d, "--json", *extra)
    return json.loads(out)


def t_stat():
    d = fresh("stat")
    run("put", d, 1, "--shards", 4, "abc")
    nbytes = 3
    for k in range(2, 30):
        v = bytes(rng.randrange(256) for _ in range(k))
        run("put", d, k, stdin=v)
        nbytes += k
    run("put", d, 2, stdin=b"xy")  # overwrite: 2 bytes instead of 2
    run("del", d, 3)
    nbytes -= 3
    run("list-add", d, 9, *range(100))
    run("list-add", d, 10, 5)
    st = stat_json(d)
    want = {"shards": 4, "keys": 28, "value_bytes": nbytes, "lists": 2, "list_ids": 101,
            "records": 31, "garbage_records": 3}
    for f, v in want.items():
        check(st[f] == v, "stat --json %s = %s, wrote %s" % (f, st[f], v))
    text = run("stat", d)[0].decode()
    for f, v in want.items():
        check(re.search(r"^%s +%d\b" % (f, v), text, re.M), "stat (text) lacks %s %d" % (f, v))
    tot = {"keys": 0, "lists": 0, "list_ids": 0, "value_bytes": 0}
    for s in range(4):
        sj = stat_json(d, "--shard", s)
        check(sj["shard"] == s, "--shard %d" % s)
        for f in tot:
            tot[f] += sj[f]
    for f in tot:
        check(tot[f] == st[f], "the shards' %s sum to %d, the total is %d" % (f, tot[f], st[f]))
    run("stat", d, "--shard", 4, code=2)


def load_model(d, model, lists):
    for k, v in model.items():
        run("put", d, k, stdin=v)
    for k, s in lists.items():
        run("list-add", d, k, stdin=" ".join(map(str, s)).encode())


def t_dump_load():
    d = fresh("dump_a")
    model = {rand_key(): rand_value() for _ in range(60)}
    lists = {rng.randrange(0, 50): {rng.randrange(0, 2**64) for _ in range(rng.randrange(1, 20))}
             for _ in range(15)}
    lists[U64] = {0, U64, 2**63}
    lists[7] = set(range(0, 3 * 150000, 3))  # 150,000 ids: three list lines
    run("put", d, 0, "--shards", 2, "")
    model[0] = b""
    load_model(d, model, lists)
    a, _ = run("dump", d)
    lines = a.decode().splitlines()
    head = json.loads(lines[0])
    check(head["kvidx"] == "dump" and head["format"] == 1 and head["shards"] == 2, "header: " + lines[0])
    end = json.loads(lines[-1])
    check(end == {"end": True, "values": len(model), "lists": len(lists),
                  "ids": sum(len(s) for s in lists.values())}, "end line: " + lines[-1])
    check(sum(1 for l in lines if l.startswith('{"key":7,"list"')) == 3, "150,000 ids not in 3 lines")
    b_dir = fresh("dump_b")
    _, err = run("load", b_dir, stdin=a)
    check("%d values" % len(model) in err, "load's summary: " + err)
    b, _ = run("dump", b_dir)
    check(a == b, "dump | load | dump differs")
    check(stat_json(b_dir)["shards"] == 2, "load did not keep the shard count")
    verify_values(b_dir, model)
    verify_lists(b_dir, lists)
    # from a file, with --shards overriding
    path = os.path.join(TMP, "dump.jsonl")
    open(path, "wb").write(a)
    c_dir = fresh("dump_c")
    run("load", c_dir, path, "--shards", 8)
    check(stat_json(c_dir)["shards"] == 8, "--shards did not override the dump's")
    c = run("dump", c_dir)[0]
    check(c.split(b"\n", 1)[1] == a.split(b"\n", 1)[1], "a load with other shards dumps other data")
    # the dump parses as JSON lines; values decode to the model's bytes
    import base64
    for l in lines[1:-1]:
        o = json.loads(l)
        if "value" in o:
            check(base64.b64decode(o["value"]) == model[o["key"]], "value line %s" % l[:60])
    # an empty database dumps a header and an end line, and loads back
    e = fresh("dump_e")
    run("put", e, 1, "x")
    run("del", e, 1)
    out = run("dump", e)[0].decode().splitlines()
    check(len(out) == 2, "an empty database's dump: %r" % out)
    run("load", fresh("dump_f"), stdin="\n".join(out).encode() + b"\n")


def t_load_rejects():
    d = fresh("rej_src")
    run("put", d, 1, "hello")
    run("list-add", d, 2, 1, 2, 3)
    dump = run("dump", d)[0].decode().splitlines()
    bad = [
        ("\n".join(dump[:-1]), "no end line"),
        ("\n".join(dump[:-1] + ['{"end":true,"values":2,"lists":1,"ids":3}']), "counts"),
        ('{"key":1,"value":"aGVsbG8"}', "base64"),
        ('{"key":1,"value":"aGVsbG9="}', "base64"),
        ('{"key":1,"value":"' + "A" * 344 + '"}', "longer than 256"),
        ('{"key":1,"value":"aGk=","x":1}', "unknown field"),
        ('{"key":1,"key":2,"value":"aGk="}', "twice"),
        ('{"key":-1,"value":"aGk="}', "integer"),
        ('{"key":1.5,"value":"aGk="}', "integer"),
        ('{"key":18446744073709551616,"value":"aGk="}', "integer"),
        ('{"key":1,"list":[]}', "without ids"),
        ('{"key":1}', "not a header"),
        ('[1,2]', "one JSON object"),
        ('{"key":1,"value":"aGk="} x', "after the object"),
        ('{"kvidx":"dump","format":2}', "format"),
        (dump[0] + "\n" + dump[0], "not the first line"),
        ('{"key":1,"value":"aGk="}\n{"end":true,"values":1,"lists":0,"ids":0}\n{"key":3,"value":""}',
         "after the end line"),
    ]
    for text, msg in bad:
        t = fresh("rej")
        _, err = run("load", t, stdin=(text + "\n").encode(), code=2)
        check(msg in err and "line" in err or msg == "no end line" and msg in err,
              "load of %r: stderr %r lacks %r" % (text[:60], err, msg))
    # what load takes from other producers: no header, keys as strings, \/ escapes, spacing
    t = fresh("rej_ok")
    text = ('{ "value" : "aGk=", "key" : "18446744073709551615" }\n\n'
            '{"key":5,"list":["1", 2, 18446744073709551615]}\n{"key":6,"value":"\\/\\/8="}\n')
    run("load", t, stdin=text.encode())
    check(run("get", t, U64)[0] == b"hi", "a string key did not load")
    check(run("list-get", t, 5)[0] == b"1\n2\n18446744073709551615\n", "a list with string ids")
    check(run("get", t, 6)[0] == b"\xff\xff", "an escaped / in base64")
    _, err = run("load", t, stdin=b'{"key":7,"value":"YS9i\\u0000"}\n', code=2)
    check("line 1" in err, "a \\u0000 escape: " + err)


def base64_of(s):
    import base64
    return base64.b64decode(s)


def find_files(d, suffix):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(suffix))


def t_check():
    d = fresh("check")
    marker = b"kvidx-check-marker-%d" % rng.randrange(10**9)
    for k in range(50):
        run("put", d, k, "v%d" % k)
    run("put", d, 1000, stdin=marker)
    run("list-add", d, 3, 1, 2, 3)
    out, _ = run("check", d)
    check(out.decode().endswith(d + ": ok\n"), "check of a sound database: %r" % out)
    hit = None
    for f in sorted(os.listdir(d)):
        data = open(os.path.join(d, f), "rb").read()
        if marker in data:
            hit = (os.path.join(d, f), data.index(marker) + 5)
            break
    check(hit is not None, "the marker value is in no file")
    with open(hit[0], "r+b") as fh:
        fh.seek(hit[1])
        b = fh.read(1)
        fh.seek(hit[1])
        fh.write(bytes([b[0] ^ 0x40]))
    out, _ = run("check", d, code=1)
    text = out.decode()
    check(text.endswith(d + ": damaged (%d line%s above)\n" % (len(text.splitlines()) - 1,
                                                              "" if len(text.splitlines()) == 2 else "s")),
          "check's last line: %r" % text[-200:])
    check(re.search(r"shard \d+", text) and "1000" in text, "check does not say where: %r" % text[:500])
    _, err = run("get", d, 1000, code=3)
    check("damaged" in err, "get of the damaged value: " + err)
    check(run("get", d, 1)[0] == b"v1", "an undamaged value")


def compact_on_pty(d):
    """Runs kvidx compact DIR with stderr on a pseudo-terminal; returns (code, stderr text)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([CLI, "compact", d], stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    deadline = time.time() + 120
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif p.poll() is not None:
            break
    p.wait(timeout=60)
    os.close(master)
    return p.returncode, p.stdout.read().decode(), b"".join(chunks).decode(errors="replace")


def t_compact():
    d = fresh("compact")
    model = {}
    run("put", d, 1, "--shards", 2, "x")
    lines = []
    for k in range(3000):
        v = os.urandom(200)
        model[k % 1000] = v
        lines.append('{"key":%d,"value":"%s"}' % (k % 1000, base64_of_bytes(v)))
    run("load", d, stdin="\n".join(lines).encode())
    before = stat_json(d)
    check(before["garbage_records"] >= 2000, "garbage before compaction: %d" % before["garbage_records"])
    code, out, err = compact_on_pty(d)
    check(code == 0, "compact on a terminal exited %d: %s" % (code, err))
    check("compacting [" in err and "] 2/2 shards" in err,
          "no progress bar on the terminal: %r" % err)
    check(out.startswith("compacted 2 shards"), "compact's report: %r" % out)
    after = stat_json(d)
    check(after["garbage_records"] == 0 and after["garbage_slots"] == 0, "garbage left: %s" % after)
    check(after["disk_bytes"] < before["disk_bytes"], "compaction did not shrink the files")
    verify_values(d, model)
    # not on a terminal: no bar
    out, err = run("compact", d)
    check(err == "" and out.startswith(b"compacted 2 shards"), "compact off a terminal: %r %r" % (out, err))
    out, _ = run("check", d)
    check(out.endswith(b": ok\n"), "check after compact")


def base64_of_bytes(b):
    import base64
    return base64.b64encode(b).decode()


def t_backup():
    d = fresh("backup_src")
    for k in range(100):
        run("put", d, k * 7, stdin=os.urandom(k % 257))
    run("list-add", d, 1, *range(50))
    dest = fresh("backup_dst")
    run("backup", d, dest)
    check(run("dump", d)[0] == run("dump", dest)[0], "the backup dumps differently")
    check(run("check", dest)[0].endswith(b": ok\n"), "the backup fails check")
    _, err = run("backup", d, dest, code=2)
    check("new or empty" in err, "backup into a non-empty directory: " + err)


CASES = [("help", t_help), ("values_model", t_values_model), ("lists_model", t_lists_model),
         ("bad_input", t_bad_input), ("not_a_database", t_not_a_database), ("locked", t_locked),
         ("stat", t_stat), ("dump_load", t_dump_load), ("load_rejects", t_load_rejects),
         ("check", t_check), ("compact", t_compact), ("backup", t_backup)]


def main():
    print("test_cli: seed %d (KVIDX_SEED=%d replays), binary %s" % (SEED, SEED, CLI))
    sys.stdout.flush()
    passed = failed = 0
    if not os.access(CLI, os.X_OK):
        print("FAIL cli_binary: %s is not there (make cli)" % CLI)
        print("test_cli: 0 passed, 1 failed")
        return 1
    os.makedirs(TMP, exist_ok=True)
    for name, fn in CASES:
        t0 = time.time()
        try:
            fn()
            print("ok   %s (%.1f s)" % (name, time.time() - t0))
            passed += 1
        except Fail as e:
            print("FAIL %s: %s (seed %d)" % (name, e, SEED))
            failed += 1
        except Exception:
            print("FAIL %s: exception (seed %d)\n%s" % (name, SEED, traceback.format_exc()))
            failed += 1
        sys.stdout.flush()
    if not failed:
        shutil.rmtree(TMP, ignore_errors=True)
    print("test_cli: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
