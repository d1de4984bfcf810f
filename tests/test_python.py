#!/usr/bin/python3
"""test_python.py -- the Python binding (examples/python/kvidx.py), end to end.

Loads the binding as a user would (examples/python on sys.path; it finds
libkvidx.so.0 in the tree, `make` builds it) and checks it against
reference models (a dict of values, a dict of id sets):

  library           version, strerror, the error classes, KVIDX_LIB loading
  model             random puts, deletes and list writes against the model,
                    reopening in between; full scans and list scans compared
  bytes             every byte value, lengths 0, 1, 255, 256, every bytes-like type
  dict_protocol     db[k], db[k] = v, del db[k], k in db, get(k, default)
  errors            257-byte value, bad keys, values, ids, pages, paths, options
  readonly          every write on a read-only handle is KvidxReadOnly
  locked            a second open, a read-only open, check() meet the lock
  not_a_database    a non-database directory, a missing one, a file
  closed            use after close, a scan cut by close, the ResourceWarning
                    of an unclosed handle, kvidx called from a log callback
  close_under_threads  close() while 4 threads use the handle, and while
                    another thread compacts: it waits, later calls raise
  scan_paging       pages of 1, 7, 1000, inclusive bounds, stopping early,
                    writing inside the loop
  list_paging       list_get/list_iter/list_scan pages, starts, limits, counts
  stats             stats() and stat_shard() against what was written
  check             a sound database; a flipped value byte; a flipped key record
  threads           4 writer/reader threads on disjoint keys, a scanner, stats
  backup            the copy holds what was written before, passes check
  compact           compaction keeps the data and clears the garbage
  options           sync, shards, sync_interval_ms, compact_pct, log
  cli_interop       values and lists written by the C tool (KVIDX_CLI, default
                    build/kvidx) read from Python; skipped when the tool is
                    missing unless KVIDX_CLI names it

Prints its seed (KVIDX_SEED replays) and ends with
"test_python: N passed, N failed" (a skipped case counts as passed); exit 0
only if none failed. Arguments select cases by name (test_python.py scan
threads). Scratch files go under $KVIDX_TEST_DIR (default tests/tmp), in
python.PID, removed at the end unless a case failed.
"""
import array
import faulthandler
import gc
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import unittest
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYDIR = os.path.join(ROOT, "examples", "python")
SEED = int(os.environ.get("KVIDX_SEED") or int(time.time() * 1000) % 1000000007)
TMP = os.path.abspath(os.path.join(os.environ.get("KVIDX_TEST_DIR") or os.path.join(ROOT, "tests", "tmp"),
                                   "python.%d" % os.getpid()))
CLI_ENV = os.environ.get("KVIDX_CLI")
CLI = os.path.abspath(CLI_ENV or os.path.join(ROOT, "build", "kvidx"))
U64 = 2**64 - 1

sys.path.insert(0, PYDIR)
kvidx = None  # imported in main(), so that a failed import is a reported failure


def flip(path, offset):
    """Flips one bit of the byte at offset."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x40]))


class T(unittest.TestCase):
    def setUp(self):
        self.name = self._testMethodName[len("test_"):]
        self.rng = random.Random("%d:%s" % (SEED, self.name))  # per case: replays alone
        self.base = os.path.join(TMP, self.name)
        shutil.rmtree(self.base, ignore_errors=True)
        os.makedirs(self.base)
        self.open = []

    def tearDown(self):
        for db in self.open:
            db.close()

    def fresh(self, name="db"):
        d = os.path.join(self.base, name)
        shutil.rmtree(d, ignore_errors=True)
        return d

    def db(self, path, **kw):
        """Opens path; closed at the end of the case if the case did not."""
        h = kvidx.KVIDX(path, **kw)
        self.open.append(h)
        return h

    def rval(self, n=None):
        if n is None:
            n = self.rng.choice([0, 1, 2, 8, 31, 100, 255, 256, self.rng.randrange(257)])
        return bytes(self.rng.getrandbits(8) for _ in range(n))

    def assertKvidx(self, cls, code, fn, *args, **kw):
        """fn(*args) raises cls with .code and .message of strerror(code)."""
        with self.assertRaises(cls) as cm:
            fn(*args, **kw)
        e = cm.exception
        self.assertIsInstance(e, kvidx.KvidxError)
        self.assertEqual(e.code, code)
        self.assertEqual(e.message, kvidx.strerror(code))
        self.assertIn(e.message, str(e))
        self.assertIn(e.name, str(e))
        return e

    def verify(self, db, model, lists):
        """The database holds exactly model (values) and lists (id sets)."""
        want = sorted(model.items())
        self.assertEqual(list(db.scan()), want)
        for k, v in want:
            self.assertEqual(db.get(k), v)
        self.assertEqual(list(db.list_scan()), sorted((k, len(s)) for k, s in lists.items()))
        for k, s in lists.items():
            self.assertEqual(db.list_get(k), sorted(s))
            self.assertEqual(db.list_count(k), len(s))
        st = db.stats()
        self.assertEqual((st["keys"], st["value_bytes"], st["lists"], st["list_ids"]),
                         (len(model), sum(map(len, model.values())), len(lists),
                          sum(map(len, lists.values()))))

    # ---- the library ------------------------------------------------------

    def test_library(self):
        v = kvidx.version()
        self.assertRegex(v, r"^\d+\.\d+\.\d+$")
        if os.path.dirname(os.path.abspath(kvidx.LIBRARY_PATH)) == ROOT:
            with open(os.path.join(ROOT, "kvidx.h")) as fh:
                hdr = fh.read()
            self.assertEqual(v, re.search(r'#define KVIDX_VERSION_STRING "([^"]+)"', hdr).group(1))
        self.assertEqual(kvidx.strerror(0), "ok")
        self.assertEqual(kvidx.strerror(-9), "value or buffer size out of range")
        self.assertEqual(kvidx.strerror(12345), "unknown error")
        classes = {-1: kvidx.KvidxInvalid, -2: kvidx.KvidxNoMemory, -3: kvidx.KvidxIOError,
                   -4: kvidx.KvidxCorrupt, -5: kvidx.KvidxLocked, -6: kvidx.KvidxVersion,
                   -7: kvidx.KvidxFull, -8: kvidx.KvidxReadOnly, -9: kvidx.KvidxTooBig,
                   -10: kvidx.KvidxProtocol, -11: kvidx.KvidxMisuse}
        names = set()
        for code, cls in classes.items():
            e = kvidx._error(code, "ctx")
            self.assertIs(type(e), cls)
            self.assertEqual((e.code, e.message), (code, kvidx.strerror(code)))
            self.assertNotEqual(e.message, "unknown error")
            names.add(e.name)
        self.assertEqual(len(names), 11)
        self.assertIs(type(kvidx._error(-99, None)), kvidx.KvidxError)
        self.assertTrue(issubclass(kvidx.KvidxInvalid, ValueError))
        self.assertTrue(issubclass(kvidx.KvidxTooBig, ValueError))
        self.assertTrue(issubclass(kvidx.KvidxClosed, kvidx.KvidxMisuse))
        # KVIDX_LIB: a path that is not there is an ImportError naming it;
        # the tree's library by that variable loads.
        env = dict(os.environ, PYTHONPATH=PYDIR)
        code = "import kvidx; print(kvidx.LIBRARY_PATH, kvidx.version())"
        env["KVIDX_LIB"] = os.path.join(self.base, "nope.so")
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=60)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("ImportError", p.stderr)
        self.assertIn("KVIDX_LIB=" + env["KVIDX_LIB"], p.stderr)
        env["KVIDX_LIB"] = kvidx.LIBRARY_PATH
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=60)
        self.assertEqual((p.returncode, p.stdout.strip()), (0, "%s %s" % (kvidx.LIBRARY_PATH, v)),
                         p.stderr)
        # the module away from the tree: it loads an installed library, or
        # says what it tried and how to fix it
        os.makedirs(os.path.join(self.base, "away"))
        shutil.copy(os.path.join(PYDIR, "kvidx.py"), os.path.join(self.base, "away"))
        env.pop("KVIDX_LIB")
        env["PYTHONPATH"] = os.path.join(self.base, "away")
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=60)
        if p.returncode != 0:
            self.assertIn("ImportError", p.stderr)
            self.assertIn("Tried", p.stderr)
            self.assertIn("KVIDX_LIB", p.stderr)

    # ---- values and lists against the model ----------------------------------

    def test_model(self):
        rng = self.rng
        d = self.fresh()
        shards = rng.choice([1, 2, 8])
        keys = [0, 1, U64, U64 - 1, 2**63, 2**32] + [rng.randrange(2**64) for _ in range(60)] \
            + list(range(100, 160))
        ids = [0, U64, 2**63] + [rng.randrange(2**64) for _ in range(40)] + list(range(200))
        model, lists = {}, {}
        for rnd in range(5):
            with kvidx.KVIDX(d, shards=shards) as db:
                self.verify(db, model, lists)
                for _ in range(2500):
                    k = rng.choice(keys)
                    op = rng.randrange(12)
                    if op < 4:
                        v = self.rval()
                        db.put(k, v)
                        model[k] = v
                    elif op == 4:
                        self.assertEqual(db.delete(k), k in model)
                        model.pop(k, None)
                    elif op == 5:
                        self.assertEqual(db.get(k), model.get(k))
                    elif op < 8:
                        new = [rng.choice(ids) for _ in range(rng.randrange(1, 20))]
                        s = lists.setdefault(k, set())
                        want = len(set(new) - s)
                        self.assertEqual(db.list_add(k, new), want)
                        s.update(new)
                    elif op == 8:
                        gone = [rng.choice(ids) for _ in range(rng.randrange(1, 20))]
                        s = lists.get(k, set())
                        self.assertEqual(db.list_remove(k, gone), len(s & set(gone)))
                        s.difference_update(gone)
                        if not s:
                            lists.pop(k, None)
                    elif op == 9:
                        new = [rng.choice(ids) for _ in range(rng.randrange(0, 30))]
                        db.list_put(k, new)
                        if new:
                            lists[k] = set(new)
                        else:
                            lists.pop(k, None)
                    elif op == 10:
                        self.assertEqual(db.list_delete(k), k in lists)
                        lists.pop(k, None)
                    else:
                        i = rng.choice(ids)
                        self.assertEqual(db.list_contains(k, i), i in lists.get(k, ()))
                        self.assertEqual(db.list_count(k), len(lists.get(k, ())))
                self.verify(db, model, lists)
            self.assertEqual(db.closed, True)
        with kvidx.KVIDX(d, readonly=True) as db:
            self.verify(db, model, lists)
            self.assertEqual(db.stats()["shards"], shards)

    def test_bytes(self):
        d = self.fresh()
        model = {}
        with kvidx.KVIDX(d, shards=2) as db:
            for b in range(256):
                db.put(b, bytes([b]))
                model[b] = bytes([b])
            every = bytes(range(256))
            for k, v in ((1000, every), (1001, every[::-1]), (1002, b""), (1003, b"\0"),
                         (1004, b"\xff" * 255), (1005, b"\0" * 256), (1006, self.rval(255)),
                         (1007, self.rval(256)), (1008, self.rval(1))):
                db.put(k, v)
                model[k] = v
            # every bytes-like type stores its bytes
            for k, v in ((2000, bytearray(b"ba\0")), (2001, memoryview(b"xmvx")[1:3]),
                         (2002, array.array("B", [0, 1, 255])), (2003, memoryview(b"")),
                         (2004, array.array("H", [0x0102]))):
                db.put(k, v)
                model[k] = memoryview(v).tobytes()
            for k, v in model.items():
                self.assertEqual(db.get(k), v)
                self.assertIs(type(db.get(k)), bytes)
            self.assertEqual(list(db.scan()), sorted(model.items()))
            self.assertIn(1002, db)   # an empty value is a value
        with kvidx.KVIDX(d, readonly=True) as db:
            for k, v in model.items():
                self.assertEqual(db.get(k), v)
            self.assertEqual(list(db.scan(page=3)), sorted(model.items()))
            self.assertEqual(db.stats()["value_bytes"], sum(map(len, model.values())))

    def test_dict_protocol(self):
        db = self.db(self.fresh())
        db[5] = b"five"
        self.assertEqual(db[5], b"five")
        self.assertIn(5, db)
        self.assertNotIn(6, db)
        with self.assertRaises(KeyError):
            db[6]
        self.assertIsNone(db.get(6))
        self.assertEqual(db.get(6, b"dflt"), b"dflt")
        del db[5]
        with self.assertRaises(KeyError):
            del db[5]
        self.assertNotIn(5, db)
        self.assertFalse(db.delete(5))
        db[U64] = b"top"
        self.assertEqual(db[U64], b"top")
        self.assertTrue(bool(db))   # no __len__: an empty database is still true
        self.assertIn("KVIDX", repr(db))

    # ---- errors -----------------------------------------------------------------

    def test_errors(self):
        d = self.fresh()
        db = self.db(d, shards=4)
        db.put(1, b"before")
        for n in (257, 1000):
            e = self.assertKvidx(kvidx.KvidxTooBig, -9, db.put, 1, b"x" * n)
            self.assertIsInstance(e, ValueError)
            self.assertIn(str(n), str(e))
        self.assertEqual(db.get(1), b"before")   # nothing stored
        for bad in ("1", 1.0, None, b"1", [1], True, 2.0**64):
            with self.assertRaises(TypeError, msg=repr(bad)):
                db.put(bad, b"x")
            with self.assertRaises(TypeError, msg=repr(bad)):
                db.get(bad)
            with self.assertRaises(TypeError, msg=repr(bad)):
                db.list_add(bad, [1])
        for bad in (-1, 2**64, -2**70, 2**100):
            self.assertKvidx(kvidx.KvidxInvalid, -1, db.put, bad, b"x")
            self.assertKvidx(kvidx.KvidxInvalid, -1, db.get, bad)
            self.assertKvidx(kvidx.KvidxInvalid, -1, db.delete, bad)
            self.assertKvidx(kvidx.KvidxInvalid, -1, db.list_contains, 1, bad)
            self.assertKvidx(kvidx.KvidxInvalid, -1, db.list_add, 1, [1, bad])
        self.assertIsNone(db.get(U64))   # the largest key is fine
        for bad in ("text", 5, None, [1, 2], 3.5, {1: 2}):
            with self.assertRaises(TypeError, msg=repr(bad)):
                db.put(2, bad)
        for bad in ("abc", b"abc", 5, [1.5], [None], None):
            with self.assertRaises(TypeError, msg=repr(bad)):
                db.list_add(3, bad)
        self.assertEqual(db.list_count(3), 0)   # nothing stored
        for page in (0, -1, 2**25):
            with self.assertRaises(ValueError):
                db.scan(page=page)
            with self.assertRaises(ValueError):
                db.list_iter(1, page=page)
        self.assertKvidx(kvidx.KvidxInvalid, -1, db.scan, 5, 4)           # raised at the call
        self.assertKvidx(kvidx.KvidxInvalid, -1, db.list_scan, 5, 4)
        e = self.assertKvidx(kvidx.KvidxInvalid, -1, db.stat_shard, 4)    # from the library
        self.assertIn("kvidx_stat_shard", str(e))
        self.assertKvidx(kvidx.KvidxInvalid, -1, db.stat_shard, 2**32)
        self.assertKvidx(kvidx.KvidxInvalid, -1, kvidx.KVIDX, d + "\0x")
        with self.assertRaises(TypeError):
            kvidx.KVIDX(None)
        with self.assertRaises(TypeError):
            kvidx.KVIDX(self.fresh("x"), log=5)
        for kw in ({"shards": 3}, {"shards": 2048}, {"compact_pct": 100}, {"shards": 2**33}):
            self.assertKvidx(kvidx.KvidxInvalid, -1, kvidx.KVIDX, self.fresh("bad"), **kw)
        e = self.assertKvidx(kvidx.KvidxInvalid, -1, db.backup, self.base)   # not empty
        self.assertIn("kvidx_backup", str(e))

    def test_readonly(self):
        d = self.fresh()
        with kvidx.KVIDX(d) as db:
            db.put(1, b"one")
            db.list_add(1, [1, 2])
        with kvidx.KVIDX(d, readonly=True) as db:
            self.assertTrue(db.readonly)
            self.assertEqual(db.get(1), b"one")
            self.assertEqual(db.list_get(1), [1, 2])
            for fn, args in ((db.put, (1, b"x")), (db.put, (2, b"")), (db.delete, (1,)),
                             (db.list_add, (1, [3])), (db.list_put, (1, [3])),
                             (db.list_remove, (1, [1])), (db.list_delete, (1,)),
                             (db.compact, ())):
                self.assertKvidx(kvidx.KvidxReadOnly, -8, fn, *args)
            db.sync()   # OK on a read-only handle
            self.assertEqual((db.get(1), db.list_get(1)), (b"one", [1, 2]))
        missing = self.fresh("missing")
        self.assertKvidx(kvidx.KvidxInvalid, -1, kvidx.KVIDX, missing, readonly=True)
        self.assertFalse(os.path.exists(missing))   # never creates

    def test_locked(self):
        d = self.fresh()
        db = self.db(d)
        db.put(1, b"x")
        e = self.assertKvidx(kvidx.KvidxLocked, -5, kvidx.KVIDX, d)
        self.assertIn(repr(d), str(e))
        self.assertKvidx(kvidx.KvidxLocked, -5, kvidx.KVIDX, d, readonly=True)
        e = self.assertKvidx(kvidx.KvidxLocked, -5, kvidx.check, d)
        self.assertIsInstance(e.report, list)
        db.close()
        with kvidx.KVIDX(d, readonly=True) as r1, kvidx.KVIDX(d, readonly=True) as r2:
            self.assertEqual((r1.get(1), r2.get(1)), (b"x", b"x"))   # readers share
            self.assertKvidx(kvidx.KvidxLocked, -5, kvidx.KVIDX, d)
        with kvidx.KVIDX(d) as db:
            self.assertEqual(db.get(1), b"x")

    def test_not_a_database(self):
        d = self.fresh()
        os.makedirs(d)
        with open(os.path.join(d, "notes.txt"), "w") as f:
            f.write("hello\n")
        self.assertKvidx(kvidx.KvidxInvalid, -1, kvidx.KVIDX, d)
        self.assertKvidx(kvidx.KvidxInvalid, -1, kvidx.KVIDX, d, readonly=True)
        self.assertKvidx(kvidx.KvidxInvalid, -1, kvidx.check, d)
        self.assertEqual(os.listdir(d), ["notes.txt"])
        missing = self.fresh("missing")
        self.assertKvidx(kvidx.KvidxInvalid, -1, kvidx.KVIDX, missing, create=False)
        self.assertFalse(os.path.exists(missing))
        self.assertKvidx(kvidx.KvidxInvalid, -1, kvidx.KVIDX, os.path.join(d, "notes.txt"))
        self.assertKvidx(kvidx.KvidxInvalid, -1, kvidx.KVIDX, os.path.join(missing, "a", "b"))

    # ---- close ------------------------------------------------------------------

    def test_closed(self):
        d = self.fresh()
        db = kvidx.KVIDX(d)
        db.put(1, b"x")
        for k in range(10):
            db.put(k, b"v")
        gen = db.scan(page=1)
        self.assertEqual(next(gen), (0, b"v"))
        db.close()
        self.assertTrue(db.closed)
        db.close()   # a second close is a no-op
        calls = [(db.get, (1,)), (db.put, (1, b"y")), (db.delete, (1,)), (db.__contains__, (1,)),
                 (db.__getitem__, (1,)), (db.sync, ()), (db.compact, ()), (db.stats, ()),
                 (db.stat_shard, (0,)), (db.backup, (self.fresh("bk"),)), (db.scan, ()),
                 (db.list_add, (1, [1])), (db.list_put, (1, [])), (db.list_remove, (1, [1])),
                 (db.list_delete, (1,)), (db.list_get, (1,)), (db.list_count, (1,)),
                 (db.list_contains, (1, 1)), (db.list_iter, (1,)), (db.list_scan, ())]
        for fn, args in calls:
            e = self.assertKvidx(kvidx.KvidxClosed, -11, fn, *args)
            self.assertIsInstance(e, kvidx.KvidxMisuse)
            self.assertIn("closed", str(e))
        self.assertKvidx(kvidx.KvidxClosed, -11, next, gen)   # a scan cut by close
        self.assertFalse(os.path.exists(self.fresh("bk")))
        with kvidx.KVIDX(d) as db2:
            self.assertEqual(db2.get(1), b"v")
        self.assertTrue(db2.closed)
        # an unclosed handle that is collected: a ResourceWarning, and closed
        # (its lock released)
        db3 = kvidx.KVIDX(d)
        db3.put(2, b"gc")
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            del db3
            gc.collect()
        self.assertTrue(any(issubclass(w.category, ResourceWarning) for w in ws), ws)
        with kvidx.KVIDX(d) as db4:
            self.assertEqual(db4.get(2), b"gc")
        # kvidx called from a log callback is refused (the C rule), not a deadlock
        seen = []
        with kvidx.KVIDX(d) as db5:
            def log(msg):
                seen.append(msg)
                try:
                    db5.get(1)
                except kvidx.KvidxMisuse as e:
                    seen.append(e)
            kvidx._log_wrapper(log)(None, b"a warning")
            self.assertEqual(db5.get(1), b"v")   # the flag was reset
        self.assertEqual(seen[0], "a warning")
        self.assertIsInstance(seen[1], kvidx.KvidxMisuse)

    def test_close_under_threads(self):
        """close() while 4 threads use the handle: it waits for the calls in
        progress, later calls raise KvidxClosed, nothing crashes, and every
        put that returned is there after reopening."""
        d = self.fresh()
        db = kvidx.KVIDX(d, shards=4)
        done = [[] for _ in range(4)]
        ends = [None] * 4

        def worker(t):
            i = 0
            try:
                while True:
                    k = t * 1000000 + i
                    db.put(k, b"%d" % k)
                    done[t].append(k)
                    db.get(k)
                    db.list_add(t, [i])
                    if i % 50 == 0:
                        list(db.scan(t * 1000000, k, page=7))
                    i += 1
            except kvidx.KvidxClosed as e:
                ends[t] = e
            except BaseException as e:
                ends[t] = e
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        time.sleep(0.3)
        db.close()
        for th in threads:
            th.join(30)
            self.assertFalse(th.is_alive())
        for e in ends:
            self.assertIsInstance(e, kvidx.KvidxClosed, repr(e))
        with kvidx.KVIDX(d) as db:
            for t in range(4):
                self.assertGreater(len(done[t]), 0)
                for k in done[t]:
                    self.assertEqual(db.get(k), b"%d" % k)
        # close() during a long call on another thread (a compaction, some
        # ms): it waits for the call, which completes
        for rnd in range(3):
            db = kvidx.KVIDX(d, compact_pct=0)
            for k in range(3000):
                db.put(k, b"g%d" % rnd)
            started, res = threading.Event(), []

            def compact():
                started.set()
                try:
                    db.compact()
                    res.append(None)
                except BaseException as e:
                    res.append(e)
            th = threading.Thread(target=compact)
            th.start()
            started.wait()
            time.sleep(0.002)
            db.close()
            th.join(30)
            self.assertEqual(len(res), 1)
            self.assertTrue(res[0] is None or isinstance(res[0], kvidx.KvidxClosed), repr(res[0]))
            self.assertEqual(kvidx.check(d), (True, []))
        with kvidx.KVIDX(d) as db:
            self.assertEqual(db.get(2999), b"g2")

    # ---- paging -----------------------------------------------------------------

    def test_scan_paging(self):
        rng = self.rng
        db = self.db(self.fresh(), shards=8)
        model = {}
        for k in [0, 1, 2, U64, U64 - 1, 2**32, 2**63] + [rng.randrange(2**64) for _ in range(300)]:
            model[k] = self.rval(rng.randrange(20))
            db.put(k, model[k])
        want = sorted(model.items())
        for page in (1, 7, 1000, 10**6):
            self.assertEqual(list(db.scan(page=page)), want, page)
        ks = sorted(model)
        for _ in range(60):
            lo = rng.choice(ks) + rng.choice([-1, 0, 1])
            hi = rng.choice(ks) + rng.choice([-1, 0, 1])
            lo, hi = max(0, min(lo, U64)), max(0, min(hi, U64))
            lo, hi = min(lo, hi), max(lo, hi)
            page = rng.choice([1, 2, 7, 1000])
            self.assertEqual(list(db.scan(lo, hi, page=page)),
                             [(k, v) for k, v in want if lo <= k <= hi], (lo, hi, page))
        self.assertEqual(list(db.scan(U64, U64)), [(U64, model[U64])])
        self.assertEqual(list(db.scan(0, 0, page=1)), [(0, model[0])])
        self.assertEqual(list(db.scan(3, 3)), [])
        # stopping early holds nothing: writes go on, a later scan is whole
        for page in (1, 7, 1000):
            got = []
            for kv in db.scan(page=page):
                got.append(kv)
                if len(got) == 10:
                    break
            self.assertEqual(got, want[:10])
        gen = db.scan(page=7)
        next(gen)
        db.put(5, b"five")
        model[5] = b"five"
        gen.close()
        want = sorted(model.items())
        self.assertEqual(list(db.scan()), want)
        # writing inside the loop: keys live throughout are visited once each,
        # ascending, with their values
        volatile = set(rng.sample(ks, 100))
        stable = {k: v for k, v in model.items() if k not in volatile}
        fresh_keys = [rng.randrange(2**64) for _ in range(200)]
        seen = []
        for page in (1, 7, 1000):
            seen.clear()
            for k, v in db.scan(page=page):
                seen.append(k)
                if k in stable:
                    self.assertEqual(v, stable[k])
                else:
                    self.assertTrue(k in volatile or k in fresh_keys, k)
                if rng.random() < 0.3:
                    x = rng.choice(sorted(volatile))
                    if rng.random() < 0.5:
                        db.delete(x)
                        model.pop(x, None)
                    else:
                        model[x] = b"new"
                        db.put(x, b"new")
                    y = rng.choice(fresh_keys)
                    volatile.add(y)
                    db.put(y, b"fresh")
                    model[y] = b"fresh"
            self.assertEqual(seen, sorted(set(seen)), page)
            self.assertTrue(set(stable) <= set(seen), page)
            self.assertEqual(list(db.scan()), sorted(model.items()))

    def test_list_paging(self):
        rng = self.rng
        db = self.db(self.fresh(), shards=4)
        ids = {0, U64, U64 - 1, 2**63} | {rng.randrange(2**64) for _ in range(6000)} \
            | set(range(1000, 5000))
        order = list(ids)
        rng.shuffle(order)
        s = set()
        for i in range(0, len(order), 997):
            chunk = order[i:i + 997] + order[max(0, i - 50):i]   # some already there
            self.assertEqual(db.list_add(7, chunk), len(set(chunk) - s))
            s.update(chunk)
        want = sorted(ids)
        self.assertEqual(db.list_get(7), want)
        self.assertEqual(db.list_count(7), len(want))
        for page in (1, 7, 1000, 4096, 10**6):
            self.assertEqual(list(db.list_iter(7, page=page)), want, page)
        for _ in range(40):
            start = rng.choice(want) + rng.choice([-1, 0, 1])
            start = max(0, min(start, U64))
            tail = [i for i in want if i >= start]
            self.assertEqual(list(db.list_iter(7, start, page=rng.choice([1, 7, 1000]))), tail)
            self.assertEqual(db.list_get(7, start), tail)
            lim = rng.choice([1, 2, 10, 5000, 20000])
            self.assertEqual(db.list_get(7, start, limit=lim), tail[:lim])
        self.assertEqual(db.list_get(7, U64), [U64])
        self.assertEqual(db.list_get(7, limit=0), [])
        self.assertEqual(list(db.list_iter(7, U64, page=1)), [U64])   # stops after the last id
        self.assertTrue(db.list_contains(7, U64))
        self.assertFalse(db.list_contains(7, 5000))
        # stopping a list_iter early, writing, reading again
        it = db.list_iter(7, page=3)
        self.assertEqual([next(it) for _ in range(5)], want[:5])
        self.assertEqual(db.list_remove(7, [want[0], want[0], 5000, 5001]), 1)
        want = want[1:]
        self.assertEqual(db.list_get(7), want)
        # inputs: sets, generators, arrays, duplicates, any order
        self.assertEqual(db.list_add(8, (i * 3 for i in range(10))), 10)
        self.assertEqual(db.list_add(8, {0, 3, 30}), 1)
        self.assertEqual(db.list_add(8, array.array("Q", [31, 31, 31])), 1)
        db.list_put(9, [5, 3, 5, 1, 3])
        self.assertEqual(db.list_get(9), [1, 3, 5])
        db.list_put(9, [])
        self.assertEqual((db.list_get(9), db.list_count(9)), ([], 0))
        # absent lists
        self.assertEqual(db.list_remove(99, [1]), 0)
        self.assertFalse(db.list_delete(99))
        self.assertEqual((db.list_get(99), list(db.list_iter(99)), db.list_count(99)), ([], [], 0))
        self.assertEqual(db.list_add(99, []), 0)
        self.assertEqual(db.list_count(99), 0)
        # list_scan paging and bounds
        lists = {7: len(want), 8: 12}
        for k in [0, U64, 2**40] + [rng.randrange(2**64) for _ in range(150)]:
            n = rng.randrange(1, 5)
            db.list_put(k, range(n))
            lists[k] = n
        wl = sorted(lists.items())
        for page in (1, 7, 1000):
            self.assertEqual(list(db.list_scan(page=page)), wl, page)
        for _ in range(30):
            lo, hi = sorted(min(rng.choice(wl)[0] + rng.choice([0, 1]), U64) for _ in range(2))
            self.assertEqual(list(db.list_scan(lo, hi, page=rng.choice([1, 7, 1000]))),
                             [(k, n) for k, n in wl if lo <= k <= hi])
        got = []
        for k, n in db.list_scan(page=2):
            got.append(k)
            db.list_delete(k)   # writing inside the loop
        self.assertEqual(got, [k for k, _ in wl])
        self.assertEqual(list(db.list_scan()), [])

    # ---- stats, check -------------------------------------------------------------

    def test_stats(self):
        rng = self.rng
        d = self.fresh()
        model, lists = {}, {}
        puts = deletes = slot_puts = 0
        with kvidx.KVIDX(d, shards=4) as db:
            for _ in range(1500):
                k = rng.randrange(600)
                if rng.random() < 0.8:
                    v = self.rval()
                    db.put(k, v)
                    model[k] = v
                    puts += 1
                    slot_puts += len(v) > 0
                elif db.delete(k):
                    del model[k]
                    deletes += 1
            for k in range(50):
                new = [rng.randrange(2**64) for _ in range(rng.randrange(1, 200))]
                db.list_add(k * 11, new)
                lists.setdefault(k * 11, set()).update(new)
            st = db.stats()
            names = ["size", "shards", "flags", "keys", "value_bytes", "records", "garbage_records",
                     "slots", "garbage_slots", "key_log_bytes", "value_log_bytes", "buffer_bytes",
                     "disk_bytes", "map_bytes", "puts", "deletes", "flushes", "syncs", "lists",
                     "list_ids", "list_ram_bytes", "list_log_bytes", "list_snapshot_bytes",
                     "list_writes", "live_bytes", "garbage_bytes", "compactions",
                     "compact_ms_max", "shard"]
            self.assertEqual(list(st), names)
            self.assertEqual((st["size"], st["shards"], st["shard"]), (224, 4, U64))
            self.assertEqual(st["keys"], len(model))
            self.assertEqual(st["value_bytes"], sum(map(len, model.values())))
            self.assertEqual((st["puts"], st["deletes"]), (puts, deletes))
            self.assertEqual(st["records"], puts + deletes)
            self.assertEqual(st["garbage_records"], st["records"] - st["keys"])
            self.assertEqual(st["lists"], len(lists))
            self.assertEqual(st["list_ids"], sum(map(len, lists.values())))
            self.assertEqual(st["list_writes"], 50)
            self.assertEqual(st["slots"], slot_puts)   # a put of 1 byte or more takes a slot
            self.assertEqual(st["live_bytes"] + st["garbage_bytes"],
                             st["records"] * 32 + st["slots"] * 256)
            total = {f: 0 for f in ("keys", "value_bytes", "records", "lists", "list_ids", "puts")}
            for i in range(4):
                sh = db.stat_shard(i)
                self.assertEqual((sh["shard"], sh["shards"], sh["size"]), (i, 4, 224))
                for f in total:
                    total[f] += sh[f]
            self.assertEqual(total, {f: st[f] for f in total})
        with kvidx.KVIDX(d, readonly=True) as db:
            st = db.stats()
            self.assertEqual((st["keys"], st["value_bytes"], st["lists"], st["list_ids"], st["puts"]),
                             (len(model), sum(map(len, model.values())), len(lists),
                              sum(map(len, lists.values())), 0))
            self.assertEqual(st["flags"] & kvidx.STAT_DIRECT_IO, 0)   # a reader writes nothing

    def test_check(self):
        d = self.fresh()
        marker = b"kvidx-py-check-%d" % self.rng.randrange(10**9)
        with kvidx.KVIDX(d, shards=1) as db:
            for k in range(40):
                db.put(k, b"v%d" % k)
            db.put(20, marker)
            db.list_add(3, [1, 2, 3])
        ok, lines = kvidx.check(d)
        self.assertEqual((ok, lines), (True, []))
        good = self.fresh("good")
        shutil.copytree(d, good)
        # a flipped byte of a value: check names the shard, reads raise
        hit = None
        for f in sorted(os.listdir(d)):
            with open(os.path.join(d, f), "rb") as fh:
                data = fh.read()
            if marker in data:
                hit = (os.path.join(d, f), data.index(marker) + 5)
        self.assertIsNotNone(hit, "the value is in no file")
        flip(*hit)
        ok, lines = kvidx.check(d)
        self.assertFalse(ok)
        self.assertTrue(lines and all(isinstance(x, str) for x in lines), lines)
        self.assertRegex("\n".join(lines), r"shard 0")
        with kvidx.KVIDX(d) as db:
            self.assertKvidx(kvidx.KvidxCorrupt, -4, db.get, 20)
            self.assertEqual(db.get(19), b"v19")
            got = []
            with self.assertRaises(kvidx.KvidxCorrupt):
                for k, v in db.scan(page=7):
                    got.append(k)
            self.assertEqual(got, list(range(20)))   # every key below the damaged one
        # a flipped byte inside a key record (.k, after the 4096-byte header)
        klog = [f for f in os.listdir(good) if f.endswith(".k")]
        self.assertEqual(len(klog), 1)
        flip(os.path.join(good, klog[0]), 4096 + 32 * 7 + 2)
        ok, lines = kvidx.check(good)
        self.assertFalse(ok)
        self.assertIn(klog[0], "\n".join(lines))
        # open logs the damage; the log callback gets it
        seen = []
        self.assertKvidx(kvidx.KvidxCorrupt, -4, kvidx.KVIDX, good, log=seen.append)
        self.assertTrue(any(klog[0] in s for s in seen), seen)
        self.assertKvidx(kvidx.KvidxInvalid, -1, kvidx.check, self.fresh("missing"))

    # ---- threads ----------------------------------------------------------------

    def test_threads(self):
        d = self.fresh()
        db = self.db(d, shards=8)
        errors = []
        models = [dict() for _ in range(4)]
        stop = threading.Event()

        def writer(t):
            rng = random.Random("%d:thread%d" % (SEED, t))
            m = models[t]
            try:
                for i in range(3000):
                    k = t << 56 | rng.randrange(400)
                    if rng.random() < 0.85:
                        v = bytes([t]) * rng.randrange(257)
                        db.put(k, v)
                        m[k] = v
                    else:
                        self.assertEqual(db.delete(k), k in m)
                        m.pop(k, None)
                    self.assertEqual(db.get(k), m.get(k))
                    if i % 10 == 0:
                        db.list_add(t, [i])
                    if i % 300 == 0:
                        self.assertEqual(list(db.scan(t << 56, (t << 56) | (2**56 - 1), page=50)),
                                         sorted(m.items()))
            except BaseException as e:
                errors.append((t, e))

        def scanner():
            try:
                while not stop.is_set():
                    prev = -1
                    for k, v in db.scan(page=64):
                        self.assertGreater(k, prev)
                        prev = k
                        self.assertEqual(v, bytes([k >> 56]) * len(v))
                    db.stats()
                    for t in range(4):
                        ids = db.list_get(t)
                        self.assertEqual(ids, sorted(ids))
            except BaseException as e:
                errors.append(("scanner", e))
        threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        sc = threading.Thread(target=scanner)
        for th in threads + [sc]:
            th.start()
        for th in threads:
            th.join(60)
        stop.set()
        sc.join(60)
        self.assertEqual(errors, [])
        model = {}
        for m in models:
            model.update(m)
        lists = {t: set(range(0, 3000, 10)) for t in range(4)}
        self.verify(db, model, lists)
        db.close()
        with kvidx.KVIDX(d, readonly=True) as db:
            self.verify(db, model, lists)

    # ---- maintenance ----------------------------------------------------------------

    def test_backup(self):
        d, dest = self.fresh(), self.fresh("copy")
        model, lists = {}, {}
        with kvidx.KVIDX(d, shards=2) as db:
            for k in range(300):
                model[k * 7] = self.rval()
                db.put(k * 7, model[k * 7])
            db.list_add(1, range(100))
            lists[1] = set(range(100))
            db.backup(dest)
            db.put(100000, b"after")   # not in the copy
            db.list_add(2, [1])
            self.assertKvidx(kvidx.KvidxInvalid, -1, db.backup, dest)   # not empty now
            self.assertKvidx(kvidx.KvidxInvalid, -1, db.backup, os.path.join(self.fresh("no"), "x"))
        self.assertEqual(kvidx.check(dest), (True, []))
        with kvidx.KVIDX(dest, create=False) as db:
            self.verify(db, model, lists)
            self.assertEqual(db.stats()["shards"], 2)

    def test_compact(self):
        d = self.fresh()
        model = {}
        with kvidx.KVIDX(d, shards=2, compact_pct=0) as db:
            for r in range(5):
                for k in range(200):
                    model[k] = self.rval(self.rng.randrange(1, 50))
                    db.put(k, model[k])
            for k in range(0, 200, 3):
                db.delete(k)
                del model[k]
            db.list_add(1, range(1000))
            db.list_remove(1, range(500))
            st = db.stats()
            self.assertGreater(st["garbage_slots"], 0)
            db.compact()
            st = db.stats()
            self.assertEqual((st["garbage_records"], st["garbage_slots"], st["garbage_bytes"]),
                             (0, 0, 0))
            self.assertGreaterEqual(st["compactions"], 2)
            self.verify(db, model, {1: set(range(500, 1000))})
        with kvidx.KVIDX(d) as db:
            self.verify(db, model, {1: set(range(500, 1000))})

    def test_options(self):
        d = self.fresh()
        seen = []
        with kvidx.KVIDX(d, sync=True, shards=2, sync_interval_ms=0, compact_pct=0,
                         log=seen.append) as db:
            db.put(1, b"durable")
            db.list_add(1, [1])
            db.sync()
            st = db.stats()
            self.assertEqual(st["shards"], 2)
            self.assertGreaterEqual(st["syncs"], 1)
        with kvidx.KVIDX(d, shards=8) as db:   # an existing database keeps its count
            self.assertEqual(db.stats()["shards"], 2)
            self.assertEqual(db.get(1), b"durable")
        with kvidx.KVIDX(os.fsencode(d)) as db:   # bytes paths, PathLike paths
            self.assertEqual(db.get(1), b"durable")
        import pathlib
        with kvidx.KVIDX(pathlib.Path(d), create=False) as db:
            self.assertEqual(db.get(1), b"durable")

    # ---- the C tool ----------------------------------------------------------------

    def test_cli_interop(self):
        if not os.access(CLI, os.X_OK):
            if CLI_ENV:
                self.fail("KVIDX_CLI=%s is not an executable" % CLI_ENV)
            self.skipTest("no C tool at %s (make cli; or set KVIDX_CLI)" % CLI)
        d = self.fresh()
        model, lists = {}, {}

        def run(*args):
            p = subprocess.run([CLI] + [str(a) for a in args], capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 0, "kvidx %s: %s" % (" ".join(map(str, args)),
                                                                 p.stderr.decode(errors="replace")))
        for k in [0, 1, 42, U64] + [self.rng.randrange(2**64) for _ in range(10)]:
            v = "value %d from the C tool" % (k % 1000)
            run("put", d, k, v)
            model[k] = v.encode()
        for k, ids in ((5, [3, 1, 2]), (U64, [0, U64]), (6, list(range(50)))):
            run("list-add", d, k, *ids)
            lists[k] = set(ids)
        run("list-add", d, 5, 2, 9)
        lists[5].add(9)
        with kvidx.KVIDX(d, create=False) as db:
            self.verify(db, model, lists)
            db.put(7, b"from python")
        self.assertEqual(kvidx.check(d), (True, []))


# ---- the runner ---------------------------------------------------------------


class Result(unittest.TestResult):
    """Prints one line per case; counts passed (skips included) and failed."""

    def __init__(self):
        super().__init__()
        self.passed = self.nfailed = 0

    def startTest(self, test):
        super().startTest(test)
        self.t0 = time.time()
        self.current = self._name(test)

    def _name(self, test):
        return test._testMethodName[len("test_"):]

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1
        print("ok   %s (%.1f s)" % (self._name(test), time.time() - self.t0), flush=True)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.passed += 1
        print("skip %s: %s" % (self._name(test), reason), flush=True)

    def _fail(self, test, err):
        self.nfailed += 1
        print("FAIL %s (seed %d):\n%s" % (self._name(test), SEED, self._exc_info_to_string(err, test)),
              flush=True)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._fail(test, err)

    def addError(self, test, err):
        super().addError(test, err)
        self._fail(test, err)


RESULT = Result()
FINISHED = threading.Event()


def watchdog(secs):
    """A hang (in the library or here) fails the run with its stacks and
    the summary line, instead of stalling it."""
    def run():
        if FINISHED.wait(secs):
            return
        print("FAIL %s: still running after %d s (KVIDX_PY_TIMEOUT); stacks follow (seed %d)"
              % (getattr(RESULT, "current", "?"), secs, SEED), flush=True)
        faulthandler.dump_traceback(sys.stdout, all_threads=True)
        print("test_python: %d passed, %d failed" % (RESULT.passed, RESULT.nfailed + 1), flush=True)
        os._exit(1)
    threading.Thread(target=run, daemon=True).start()


def main():
    global kvidx
    print("test_python: seed %d (KVIDX_SEED=%d replays), python %s" % (SEED, SEED, sys.version.split()[0]),
          flush=True)
    watchdog(int(os.environ.get("KVIDX_PY_TIMEOUT") or 120))
    try:
        import kvidx as mod
        kvidx = mod
    except Exception as e:
        print("FAIL import: %s: %s" % (type(e).__name__, e))
        print("test_python: 0 passed, 1 failed")
        return 1
    print("test_python: kvidx %s from %s" % (kvidx.version(), kvidx.LIBRARY_PATH), flush=True)
    names = sorted(n for n in dir(T) if n.startswith("test_"))
    if sys.argv[1:]:
        names = [n for n in names if any(a in n for a in sys.argv[1:])]
    os.makedirs(TMP, exist_ok=True)
    result = RESULT
    t0 = time.time()
    unittest.TestSuite(T(n) for n in names).run(result)
    FINISHED.set()
    if result.nfailed == 0:
        shutil.rmtree(TMP, ignore_errors=True)
    else:
        print("test_python: scratch files kept in %s" % TMP)
    print("test_python: %.1f s" % (time.time() - t0))
    print("test_python: %d passed, %d failed" % (result.passed, result.nfailed))
    return 0 if result.nfailed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
