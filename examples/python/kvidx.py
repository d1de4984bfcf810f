"""kvidx -- Python binding of libkvidx (ctypes; no compiled glue).

    import kvidx
    with kvidx.KVIDX("./data") as db:
        db.put(42, b"hello")
        print(db.get(42))                 # b'hello'
        db.list_add(7, [3, 1, 2])         # 3 (ids added)
        print(db.list_get(7))             # [1, 2, 3]

What it binds: kvidx.h of libkvidx 0.3.0 or newer (0.x): values, lists,
sync, compact, backup, stat, stat_shard, check. Not the Redis protocol.
examples/python/README.md is the manual; kvidx.h and docs/API.md describe
the library underneath.

Contents:
  1. loading the library (KVIDX_LIB, the build tree, the installed library)
  2. constants, errors (one KvidxError subclass per code)
  3. the C declarations (argtypes, structs, layout checks)
  4. argument checks
  5. class KVIDX: lifecycle, values, lists, maintenance
  6. module functions: version, strerror, check

Threads: ctypes releases the GIL during every library call, so several
threads can use one KVIDX at once and their calls run in parallel in C.
close() waits for the calls in progress on other threads, and every call
that starts after it raises KvidxClosed: the C rule "kvidx_close is the
last call" is enforced here instead of left to the caller.
"""

import array
import atexit
import ctypes as C
import ctypes.util
import operator
import os
import re
import threading
import warnings
import weakref

__all__ = [
    "KVIDX", "check", "version", "strerror",
    "KvidxError", "KvidxInvalid", "KvidxNoMemory", "KvidxIOError", "KvidxCorrupt",
    "KvidxLocked", "KvidxVersion", "KvidxFull", "KvidxReadOnly", "KvidxTooBig",
    "KvidxProtocol", "KvidxMisuse", "KvidxClosed",
    "KEY_MAX", "VALUE_MAX", "SHARDS_MAX", "STAT_DIRECT_IO", "LIBRARY_PATH",
]

# ---- 1. loading the library ---------------------------------------------

_NEED = (0, 3)  # kvidx_compact, kvidx_backup, kvidx_check_report, kvidx_stat_shard,
                # compact_pct and the 224-byte kvidx_stats all arrived in 0.3.0
_SONAME = "libkvidx.so.0"


def _load():
    """Returns (CDLL, the path or name it was loaded from), trying in order:
    $KVIDX_LIB; the kvidx tree this file sits in (examples/python/../../);
    ctypes.util.find_library("kvidx"); the soname through the dynamic
    loader's search path; /usr/local/lib (make install's default, which
    the loader's cache may not know until ldconfig runs)."""
    env = os.environ.get("KVIDX_LIB")
    if env:
        try:
            return C.CDLL(env), env
        except OSError as e:
            raise ImportError("kvidx: KVIDX_LIB=%s cannot be loaded: %s" % (env, e)) from None
    here = os.path.dirname(os.path.abspath(__file__))

    def candidates():   # lazily: find_library runs ldconfig or the compiler
        yield os.path.normpath(os.path.join(here, "..", "..", _SONAME))
        found = ctypes.util.find_library("kvidx")
        if found:
            yield found
        yield _SONAME
        yield "/usr/local/lib/" + _SONAME
    tried = []
    for cand in candidates():
        if os.sep in cand and not os.path.exists(cand):
            tried.append("%s: not there" % cand)
            continue
        try:
            return C.CDLL(cand), cand
        except OSError as e:
            tried.append("%s: %s" % (cand, e))
    raise ImportError("kvidx: cannot find %s. Build it with `make` in the kvidx tree, install it "
                      "with `make install`, or set KVIDX_LIB to its path. Tried:\n  %s"
                      % (_SONAME, "\n  ".join(tried)))


_lib, LIBRARY_PATH = _load()

# ---- 2. constants, errors ----------------------------------------------

KEY_MAX = 2**64 - 1      # keys and ids are 0..KEY_MAX
VALUE_MAX = 256          # KVIDX_VALUE_MAX
SHARDS_MAX = 1024        # KVIDX_SHARDS_MAX
STAT_DIRECT_IO = 0x1     # KVIDX_STAT_DIRECT_IO, a bit of stats()["flags"]

OK, NOTFOUND, CLOSED = 0, 1, 2
EINVAL, ENOMEM, EIO, ECORRUPT, ELOCKED, EVERSION = -1, -2, -3, -4, -5, -6
EFULL, ERDONLY, ETOOBIG, EPROTO, EMISUSE = -7, -8, -9, -10, -11

_CREATE, _RDONLY, _SYNC = 0x1, 0x2, 0x4


class KvidxError(Exception):
    """A kvidx error. .code is the KVIDX_E* value (negative), .name its
    macro name ("KVIDX_ETOOBIG"), .message exactly kvidx_strerror(code),
    .context the call it came from (e.g. "kvidx_open('/data')") or None,
    .detail what the module found wrong on the Python side, or None."""

    def __init__(self, code, context=None, detail=None):
        self.code = code
        self.name = _NAMES.get(code, "KVIDX_E%d" % code)
        self.message = strerror(code)
        self.context = context
        self.detail = detail
        super().__init__(code, self.message, *([detail] if detail else []))

    def __str__(self):
        return "%s%s%s (%s)" % ("%s: " % self.context if self.context else "", self.message,
                                ": %s" % self.detail if self.detail else "", self.name)


class KvidxInvalid(KvidxError, ValueError):
    """KVIDX_EINVAL: a bad argument, or a directory that is not a kvidx
    database. Also raised for an int out of range (key, id, shard, page)."""


class KvidxNoMemory(KvidxError):
    """KVIDX_ENOMEM."""


class KvidxIOError(KvidxError):
    """KVIDX_EIO: a system call failed; that shard refuses writes until reopen."""


class KvidxCorrupt(KvidxError):
    """KVIDX_ECORRUPT: a checksum or a structure check failed."""


class KvidxLocked(KvidxError):
    """KVIDX_ELOCKED: the directory is open elsewhere (this process or another)."""


class KvidxVersion(KvidxError):
    """KVIDX_EVERSION: the files use a newer format than the library reads."""


class KvidxFull(KvidxError):
    """KVIDX_EFULL: the disk, or a shard's value slots, are full."""


class KvidxReadOnly(KvidxError):
    """KVIDX_ERDONLY: a write on a handle opened with readonly=True."""


class KvidxTooBig(KvidxError, ValueError):
    """KVIDX_ETOOBIG: a value longer than 256 bytes, more than 2^28 ids in one call."""


class KvidxProtocol(KvidxError):
    """KVIDX_EPROTO (protocol sessions; not raised by this module's calls)."""


class KvidxMisuse(KvidxError):
    """KVIDX_EMISUSE: not a live handle."""


class KvidxClosed(KvidxMisuse):
    """A call on a KVIDX after close() (code KVIDX_EMISUSE). Raised by the
    module: the library is never called with a closed handle."""


_CLASSES = {EINVAL: KvidxInvalid, ENOMEM: KvidxNoMemory, EIO: KvidxIOError,
            ECORRUPT: KvidxCorrupt, ELOCKED: KvidxLocked, EVERSION: KvidxVersion,
            EFULL: KvidxFull, ERDONLY: KvidxReadOnly, ETOOBIG: KvidxTooBig,
            EPROTO: KvidxProtocol, EMISUSE: KvidxMisuse}
_NAMES = {OK: "KVIDX_OK", NOTFOUND: "KVIDX_NOTFOUND", CLOSED: "KVIDX_CLOSED",
          EINVAL: "KVIDX_EINVAL", ENOMEM: "KVIDX_ENOMEM", EIO: "KVIDX_EIO",
          ECORRUPT: "KVIDX_ECORRUPT", ELOCKED: "KVIDX_ELOCKED", EVERSION: "KVIDX_EVERSION",
          EFULL: "KVIDX_EFULL", ERDONLY: "KVIDX_ERDONLY", ETOOBIG: "KVIDX_ETOOBIG",
          EPROTO: "KVIDX_EPROTO", EMISUSE: "KVIDX_EMISUSE"}


def _error(rc, context, detail=None):
    """The exception for code rc (KvidxError itself for an unknown code)."""
    return _CLASSES.get(rc, KvidxError)(rc, context, detail)


# ---- 3. the C declarations ---------------------------------------------

_u32, _u64, _size, _int, _ptr = C.c_uint32, C.c_uint64, C.c_size_t, C.c_int, C.c_void_p

_LOG_FN = C.CFUNCTYPE(None, _ptr, C.c_char_p)                 # kvidx_log_fn
_SCAN_FN = C.CFUNCTYPE(_int, _ptr, _u64, _ptr, _size)         # kvidx_scan_fn
_LIST_SCAN_FN = C.CFUNCTYPE(_int, _ptr, _u64, _u64)           # kvidx_list_scan_fn


class _Options(C.Structure):
    """kvidx_options as of 0.3.0 (40 bytes with 64-bit pointers)."""
    _fields_ = [("size", _u32), ("flags", _u32), ("shards", _u32), ("sync_interval_ms", _u32),
                ("log", _LOG_FN), ("log_ud", _ptr), ("compact_pct", _u32), ("reserved", _u32)]


_STAT_FIELDS = ("flags keys value_bytes records garbage_records slots garbage_slots "
                "key_log_bytes value_log_bytes buffer_bytes disk_bytes map_bytes puts "
                "deletes flushes syncs lists list_ids list_ram_bytes list_log_bytes "
                "list_snapshot_bytes list_writes live_bytes garbage_bytes compactions "
                "compact_ms_max shard").split()


class _Stats(C.Structure):
    """kvidx_stats as of 0.3.0: two uint32_t, then 27 uint64_t (224 bytes)."""
    _fields_ = [("size", _u32), ("shards", _u32)] + [(f, _u64) for f in _STAT_FIELDS]


_H = _ptr  # kvidx *
_DECLS = {
    "kvidx_strerror": (C.c_char_p, [_int]),
    "kvidx_version": (C.c_char_p, []),
    "kvidx_options_init": (None, [_ptr]),
    "kvidx_open": (_int, [C.c_char_p, C.POINTER(_Options), C.POINTER(_H)]),
    "kvidx_close": (_int, [_H]),
    "kvidx_sync": (_int, [_H]),
    "kvidx_put": (_int, [_H, _u64, C.c_char_p, _size]),
    "kvidx_get": (_int, [_H, _u64, _ptr, _size, C.POINTER(_size)]),
    "kvidx_delete": (_int, [_H, _u64]),
    "kvidx_scan": (_int, [_H, _u64, _u64, _SCAN_FN, _ptr]),
    "kvidx_list_put": (_int, [_H, _u64, _ptr, _size]),
    "kvidx_list_add": (_int, [_H, _u64, _ptr, _size, C.POINTER(_size)]),
    "kvidx_list_remove": (_int, [_H, _u64, _ptr, _size, C.POINTER(_size)]),
    "kvidx_list_delete": (_int, [_H, _u64]),
    "kvidx_list_get": (_int, [_H, _u64, _u64, _ptr, _size, C.POINTER(_size)]),
    "kvidx_list_count": (_int, [_H, _u64, C.POINTER(_u64)]),
    "kvidx_list_contains": (_int, [_H, _u64, _u64]),
    "kvidx_list_scan": (_int, [_H, _u64, _u64, _LIST_SCAN_FN, _ptr]),
    "kvidx_compact": (_int, [_H]),
    "kvidx_backup": (_int, [_H, C.c_char_p]),
    "kvidx_check_report": (_int, [C.c_char_p, _LOG_FN, _ptr]),
    "kvidx_stat": (_int, [_H, C.POINTER(_Stats)]),
    "kvidx_stat_shard": (_int, [_H, _u32, C.POINTER(_Stats)]),
}
for _name, (_res, _args) in _DECLS.items():
    try:
        _fn = getattr(_lib, _name)
    except AttributeError:
        raise ImportError("kvidx: %s has no %s (this module needs libkvidx %d.%d or newer)"
                          % (LIBRARY_PATH, _name, _NEED[0], _NEED[1])) from None
    _fn.restype, _fn.argtypes = _res, _args


def _check_library():
    """Refuses a library this module was not written for: its version, and
    the layout of the structs as the library itself fills them."""
    v = _lib.kvidx_version().decode("ascii", "replace")
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", v)
    if not m or int(m.group(1)) != 0 or (int(m.group(1)), int(m.group(2))) < _NEED:
        raise ImportError("kvidx: %s is version %s; this module needs %d.%d.0 or newer, below 1.0"
                          % (LIBRARY_PATH, v, _NEED[0], _NEED[1]))
    # Our mirror of the documented layout (docs/API.md, "Other languages"
    # and "Stats"); a wrong _fields_ would shift every field after it.
    stat_offsets = {"flags": 8, "keys": 16, "syncs": 128, "lists": 136, "list_writes": 176,
                    "live_bytes": 184, "shard": 216}
    bad = [f for f, off in stat_offsets.items() if getattr(_Stats, f).offset != off]
    if C.sizeof(_Stats) != 224 or bad:
        raise ImportError("kvidx: kvidx_stats mirror is %d bytes (wrong offsets: %s), not 224"
                          % (C.sizeof(_Stats), bad))
    # kvidx_options_init writes sizeof(kvidx_options) of the library into
    # .size and its defaults into the fields: they must land where the
    # mirror has them. The buffer is larger than any plausible struct.
    probe = (C.c_ubyte * 512)(*([0xA5] * 512))
    _lib.kvidx_options_init(probe)
    o = _Options.from_buffer_copy(bytes(probe)[:C.sizeof(_Options)])
    libsize = o.size
    if (libsize < C.sizeof(_Options) or o.flags != _CREATE or o.shards != 8
            or o.sync_interval_ms != 1000 or o.compact_pct != 50 or o.log):
        raise ImportError("kvidx: kvidx_options of %s (size %d, flags %#x, shards %d, "
                          "sync_interval_ms %d, compact_pct %d) does not match this module's "
                          "(size %d)" % (LIBRARY_PATH, libsize, o.flags, o.shards,
                                         o.sync_interval_ms, o.compact_pct, C.sizeof(_Options)))


_check_library()

# ---- 4. argument checks -------------------------------------------------


def _u64_arg(x, what="key"):
    """x as an int in 0..2**64-1: TypeError for a non-integer (bool
    included), KvidxInvalid (a ValueError) when out of range."""
    if isinstance(x, bool):
        raise TypeError("%s must be an int, not bool" % what)
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError("%s must be an int, not %s" % (what, type(x).__name__)) from None
    if not 0 <= v <= KEY_MAX:
        raise _error(EINVAL, None, "%s %d is out of range 0..2**64-1" % (what, v))
    return v


def _page_arg(page):
    p = _u64_arg(page, "page")
    if p < 1 or p > 1 << 24:
        raise _error(EINVAL, None, "page %d is out of range 1..2**24" % p)
    return p


def _value_arg(value):
    """value as bytes: any bytes-like object of at most 256 bytes."""
    if isinstance(value, bytes):
        b = value
    elif isinstance(value, str):
        raise TypeError("value must be bytes-like, not str (encode it)")
    else:
        try:
            b = memoryview(value).tobytes()
        except TypeError:
            raise TypeError("value must be bytes-like, not %s" % type(value).__name__) from None
    if len(b) > VALUE_MAX:
        raise _error(ETOOBIG, None, "a value of %d bytes (the most is %d)" % (len(b), VALUE_MAX))
    return b


def _ids_arg(ids):
    """ids as a fresh array('Q') (the library reads it while other threads
    run, so it must be ours): any iterable of ints in 0..2**64-1."""
    if isinstance(ids, (str, bytes, bytearray, memoryview)):
        raise TypeError("ids must be an iterable of ints, not %s" % type(ids).__name__)
    try:
        return array.array("Q", ids)
    except OverflowError:
        raise _error(EINVAL, None, "an id out of range 0..2**64-1") from None
    except TypeError as e:
        raise TypeError("ids must be an iterable of ints: %s" % e) from None


def _path_arg(path, what="path"):
    try:
        p = os.fsencode(path)
    except TypeError:
        raise TypeError("%s must be str, bytes or os.PathLike, not %s"
                        % (what, type(path).__name__)) from None
    if b"\0" in p:
        raise _error(EINVAL, None, "%s contains a NUL byte" % what)
    return p


def _u32_opt(x, what):
    if x is None:
        return None
    v = _u64_arg(x, what)
    if v > 0xFFFFFFFF:
        raise _error(EINVAL, None, "%s %d is out of range 0..2**32-1" % (what, v))
    return v


# ---- 5. class KVIDX -----------------------------------------------------

_tls = threading.local()      # .in_log: this thread runs a user's log callback
_live = weakref.WeakSet()     # open handles, closed at interpreter exit


class KVIDX:
    """One open kvidx database directory.

    KVIDX(path, create=True, readonly=False, sync=False, shards=None,
          sync_interval_ms=None, compact_pct=None, log=None)

    path:     the directory (str, bytes or os.PathLike).
    create:   create the directory (not its parents) and the database if
              missing (KVIDX_CREATE).
    readonly: shared lock, no writes, never creates (KVIDX_RDONLY; wins
              over create).
    sync:     every write is durable before it returns (KVIDX_SYNC).
    shards, sync_interval_ms, compact_pct: the kvidx_options fields; None
              keeps the library's default (8, 1000, 50).
    log:      None (the library writes warnings to stderr) or a callable
              log(message: str), called on whatever thread hit the
              condition, background thread included; it must not call
              kvidx (doing so raises KvidxMisuse) and its exceptions are
              ignored.

    Raises the open errors of kvidx_open: KvidxInvalid (not a database,
    missing without create, bad shards), KvidxLocked, KvidxVersion,
    KvidxCorrupt, KvidxIOError, KvidxNoMemory, KvidxFull. Use as a
    context manager, or call close().
    """

    def __init__(self, path, create=True, readonly=False, sync=False, shards=None,
                 sync_interval_ms=None, compact_pct=None, log=None):
        self._db = None           # the kvidx * as an int; None once closed
        self._cond = threading.Condition(threading.Lock())
        self._busy = 0            # calls in progress in the library
        self._closing = False
        self._log_cb = None
        self._close_fn = _lib.kvidx_close  # kept for __del__ at interpreter exit
        self.path = path
        self.readonly = bool(readonly)
        p = _path_arg(path)
        o = _Options()
        _lib.kvidx_options_init(C.byref(o))
        o.size = C.sizeof(_Options)
        o.flags = (_CREATE if create else 0) | (_RDONLY if readonly else 0) | (_SYNC if sync else 0)
        for name, val in (("shards", shards), ("sync_interval_ms", sync_interval_ms),
                          ("compact_pct", compact_pct)):
            v = _u32_opt(val, name)
            if v is not None:
                setattr(o, name, v)
        if log is not None:
            if not callable(log):
                raise TypeError("log must be callable or None")
            self._log_cb = _LOG_FN(_log_wrapper(log))
            o.log = self._log_cb
        h = _H()
        rc = _lib.kvidx_open(p, C.byref(o), C.byref(h))
        if rc != OK:
            self._log_cb = None
            raise _error(rc, "kvidx_open(%r)" % (path,))
        self._db = h.value
        _live.add(self)

    # -- lifecycle --

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return "<kvidx.KVIDX %r%s%s>" % (self.path, " readonly" if self.readonly else "",
                                         " closed" if self._db is None else "")

    @property
    def closed(self):
        return self._db is None

    def _enter(self, what):
        """Counts a call in; returns the handle. Raises KvidxClosed after close()."""
        if getattr(_tls, "in_log", False):
            raise _error(EMISUSE, what, "kvidx called from a log callback")
        with self._cond:
            db = self._db
            if db is None:
                raise KvidxClosed(EMISUSE, "%s on %r" % (what, self.path), "the handle is closed")
            self._busy += 1
        return db

    def _leave(self):
        with self._cond:
            self._busy -= 1
            if self._busy == 0 and self._closing:
                self._cond.notify_all()

    def _check_open(self, what):
        """Raises KvidxClosed now, for the calls that return a generator."""
        self._enter(what)
        self._leave()

    def _call(self, name, *args):
        """Runs _lib.<name>(db, *args) counted in; returns its code."""
        db = self._enter(name)
        try:
            return getattr(_lib, name)(db, *args)
        finally:
            self._leave()

    def close(self):
        """Makes everything written durable, releases the lock, frees the
        handle (kvidx_close). Waits for the calls other threads have in
        progress on this handle; calls after it raise KvidxClosed. A
        second close() is a no-op (or waits for the first to finish).
        Raises KvidxIOError if the final sync failed; the handle is
        closed all the same."""
        if getattr(_tls, "in_log", False):
            raise _error(EMISUSE, "close", "kvidx called from a log callback")
        with self._cond:
            if self._db is None:
                while self._closing:
                    self._cond.wait()
                return
            db, self._db, self._closing = self._db, None, True
            try:
                while self._busy:
                    self._cond.wait()
            except BaseException:   # interrupted while waiting: still open
                self._db, self._closing = db, False
                self._cond.notify_all()
                raise
        try:
            rc = self._close_fn(db)
        finally:
            with self._cond:
                self._closing = False
                self._cond.notify_all()
            self._log_cb = None  # the library no longer holds it
            _live.discard(self)
        if rc != OK:
            raise _error(rc, "kvidx_close(%r)" % (self.path,))

    def __del__(self):
        if getattr(self, "_db", None) is None:
            return
        try:
            warnings.warn("unclosed %r" % (self,), ResourceWarning, source=self)
        except Exception:
            pass
        try:
            self.close()
        except Exception:
            pass

    def sync(self):
        """Everything written before the call survives power loss once it returns."""
        rc = self._call("kvidx_sync")
        if rc != OK:
            raise _error(rc, "kvidx_sync")

    # -- values --

    def put(self, key, value):
        """Sets key (int 0..2**64-1) to value (bytes-like, 0..256 bytes)."""
        k, v = _u64_arg(key), _value_arg(value)
        rc = self._call("kvidx_put", k, v, len(v))
        if rc != OK:
            raise _error(rc, "kvidx_put(%d)" % k)

    def get(self, key, default=None):
        """The value of key as bytes, or default if it has none.
        Raises KvidxCorrupt if the stored bytes fail their checksum."""
        k = _u64_arg(key)
        buf = C.create_string_buffer(VALUE_MAX)
        n = _size()
        rc = self._call("kvidx_get", k, buf, VALUE_MAX, C.byref(n))
        if rc == OK:
            return buf.raw[:n.value]
        if rc == NOTFOUND:
            return default
        raise _error(rc, "kvidx_get(%d)" % k)

    def _delete(self, name, key):
        """kvidx_delete or kvidx_list_delete: True if there was something."""
        k = _u64_arg(key)
        rc = self._call(name, k)
        if rc == OK:
            return True
        if rc == NOTFOUND:
            return False
        raise _error(rc, "%s(%d)" % (name, k))

    def delete(self, key):
        """Removes key's value; True if there was one."""
        return self._delete("kvidx_delete", key)

    def __getitem__(self, key):
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key, value):
        self.put(key, value)

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key):
        """key has a value (a kvidx_get with no buffer: nothing is copied)."""
        k = _u64_arg(key)
        n = _size()
        rc = self._call("kvidx_get", k, None, 0, C.byref(n))
        if rc in (OK, ETOOBIG):    # ETOOBIG: there is a value, longer than our 0 bytes
            return True
        if rc == NOTFOUND:
            return False
        raise _error(rc, "kvidx_get(%d)" % k)

    def scan(self, start=0, stop=KEY_MAX, page=1024):
        """Yields (key, value) for every key in [start, stop] (both
        inclusive), ascending. Each page of at most `page` entries is
        copied by one kvidx_scan call; the next page starts at the last
        key + 1. Nothing is held in the library while your loop runs, so
        the loop may write to the database, and stopping early costs
        nothing. Keys live for the whole loop are each yielded once;
        keys written or deleted during it ahead of the cursor may or may
        not be (up to `page` entries are already copied). Raises
        KvidxCorrupt after yielding the keys below a damaged value."""
        lo, hi, page = _u64_arg(start, "start"), _u64_arg(stop, "stop"), _page_arg(page)
        if lo > hi:
            raise _error(EINVAL, "scan", "start %d > stop %d" % (lo, hi))
        self._check_open("kvidx_scan")

        def copy(ud, key, val, n, out, exc):
            try:
                out.append((key, C.string_at(val, n) if n else b""))
                return 1 if len(out) >= page else 0
            except BaseException as e:   # never let an exception cross the C frames
                exc.append(e)
                return 1
        return self._paged("kvidx_scan", _SCAN_FN, copy, lo, hi, page)

    def _paged(self, name, fntype, copy, lo, hi, page):
        """The generator behind scan and list_scan: one library call per
        page, yielding outside it."""
        out, exc = [], []
        cb = fntype(lambda *a: copy(*a, out, exc))
        while True:
            rc = self._call(name, lo, hi, cb, None)
            if exc:
                raise exc[0]
            batch = out[:]
            out.clear()
            yield from batch
            if rc != OK:
                raise _error(rc, "%s from %d" % (name, lo))
            if len(batch) < page or batch[-1][0] >= hi:
                return
            lo = batch[-1][0] + 1

    # -- lists --

    def list_put(self, key, ids):
        """Replaces key's list by ids (an iterable of ints, any order,
        duplicates allowed); no ids deletes the list."""
        k, a = _u64_arg(key), _ids_arg(ids)
        rc = self._call("kvidx_list_put", k, a.buffer_info()[0] if a else None, len(a))
        if rc != OK:
            raise _error(rc, "kvidx_list_put(%d)" % k)

    def list_add(self, key, ids):
        """Adds ids to key's list (creating it); returns how many were new."""
        k, a = _u64_arg(key), _ids_arg(ids)
        n = _size()
        rc = self._call("kvidx_list_add", k, a.buffer_info()[0] if a else None, len(a), C.byref(n))
        if rc != OK:
            raise _error(rc, "kvidx_list_add(%d)" % k)
        return n.value

    def list_remove(self, key, ids):
        """Removes ids from key's list; returns how many were there (0 if
        there is no such list)."""
        k, a = _u64_arg(key), _ids_arg(ids)
        n = _size()
        rc = self._call("kvidx_list_remove", k, a.buffer_info()[0] if a else None, len(a),
                        C.byref(n))
        if rc == OK:
            return n.value
        if rc == NOTFOUND:
            return 0
        raise _error(rc, "kvidx_list_remove(%d)" % k)

    def list_delete(self, key):
        """Deletes key's list; True if there was one."""
        return self._delete("kvidx_list_delete", key)

    def list_count(self, key):
        """The number of ids in key's list (0 if there is none)."""
        k = _u64_arg(key)
        n = _u64()
        rc = self._call("kvidx_list_count", k, C.byref(n))
        if rc in (OK, NOTFOUND):
            return n.value if rc == OK else 0
        raise _error(rc, "kvidx_list_count(%d)" % k)

    def list_contains(self, key, id):
        """True if key's list holds id."""
        k, i = _u64_arg(key), _u64_arg(id, "id")
        rc = self._call("kvidx_list_contains", k, i)
        if rc in (OK, NOTFOUND):
            return rc == OK
        raise _error(rc, "kvidx_list_contains(%d)" % k)

    def _list_get1(self, k, start, cap):
        arr = (_u64 * cap)()
        n = _size()
        rc = self._call("kvidx_list_get", k, start, arr, cap, C.byref(n))
        if rc == NOTFOUND:
            return []
        if rc != OK:
            raise _error(rc, "kvidx_list_get(%d)" % k)
        return arr[:n.value]

    def list_get(self, key, start=0, limit=None):
        """The ids of key's list that are >= start, ascending, as a list of
        ints ([] if there is no such list); at most limit of them if limit
        is not None. The result is one version of the list (one
        kvidx_list_get call), unless writers keep growing it faster than
        it can be sized, when it falls back to pages (list_iter)."""
        k, start = _u64_arg(key), _u64_arg(start, "start")
        if limit is not None:
            limit = _u64_arg(limit, "limit")
            if limit == 0:
                return []
        for _ in range(4):
            cap = self.list_count(k)
            cap += max(16, cap // 8)   # room for ids added between the count and the copy
            if limit is not None and limit <= cap:
                return self._list_get1(k, start, limit)
            ids = self._list_get1(k, start, cap)
            if len(ids) < cap:
                return ids
        it = self.list_iter(k, start)
        return list(it) if limit is None else [i for i, _ in zip(it, range(limit))]

    def list_iter(self, key, start=0, page=4096):
        """Yields the ids of key's list that are >= start, ascending, one
        kvidx_list_get call per page of `page` ids, the next page starting
        at the last id + 1; nothing is held between pages."""
        k, start, page = _u64_arg(key), _u64_arg(start, "start"), _page_arg(page)
        self._check_open("kvidx_list_get")

        def gen(start):
            while True:
                ids = self._list_get1(k, start, page)
                yield from ids
                if len(ids) < page or ids[-1] == KEY_MAX:
                    return
                start = ids[-1] + 1
        return gen(start)

    def list_scan(self, start=0, stop=KEY_MAX, page=1024):
        """Yields (key, count) for every list whose key is in [start, stop]
        (inclusive), ascending, paged as scan() is."""
        lo, hi, page = _u64_arg(start, "start"), _u64_arg(stop, "stop"), _page_arg(page)
        if lo > hi:
            raise _error(EINVAL, "list_scan", "start %d > stop %d" % (lo, hi))
        self._check_open("kvidx_list_scan")

        def copy(ud, key, count, out, exc):
            try:
                out.append((key, count))
                return 1 if len(out) >= page else 0
            except BaseException as e:
                exc.append(e)
                return 1
        return self._paged("kvidx_list_scan", _LIST_SCAN_FN, copy, lo, hi, page)

    # -- maintenance --

    def compact(self):
        """Rewrites every shard without its garbage (kvidx_compact)."""
        rc = self._call("kvidx_compact")
        if rc != OK:
            raise _error(rc, "kvidx_compact")

    def backup(self, dest):
        """Copies the database, as it is at one moment, into directory
        dest (created, or an empty directory), while it serves."""
        d = _path_arg(dest, "dest")
        rc = self._call("kvidx_backup", d)
        if rc != OK:
            raise _error(rc, "kvidx_backup(%r)" % (dest,))

    def stats(self):
        """kvidx_stat as a dict: every field of kvidx_stats by its C name
        (size, shards, flags, keys, value_bytes, ... shard). A library
        older than this module fills fewer fields; the missing ones are
        left out (size says how many bytes were filled)."""
        return self._stat("kvidx_stat")

    def stat_shard(self, shard):
        """kvidx_stat_shard: the same dict for shard 0..shards-1 alone."""
        s = _u32_opt(shard, "shard")
        return self._stat("kvidx_stat_shard", s)

    def _stat(self, name, *args):
        st = _Stats()
        st.size = C.sizeof(_Stats)
        rc = self._call(name, *(args + (C.byref(st),)))
        if rc != OK:
            raise _error(rc, "%s%s" % (name, "(%d)" % args[0] if args else ""))
        return {f: getattr(st, f) for f, _ in _Stats._fields_
                if getattr(_Stats, f).offset + getattr(_Stats, f).size <= st.size}


def _log_wrapper(fn):
    def log(ud, msg):
        _tls.in_log = True
        try:
            fn(msg.decode("utf-8", "replace") if msg is not None else "")
        except BaseException:
            pass   # nowhere to report it: the library called us
        finally:
            _tls.in_log = False
    return log


@atexit.register
def _close_all():
    """Closes the handles still open at exit, so that their last writes are
    synced and their locks released (as kvidx_close would)."""
    for db in list(_live):
        try:
            db.close()
        except Exception:
            pass


# ---- 6. module functions -------------------------------------------------


def version():
    """The library's version string, e.g. "0.5.0" (kvidx_version)."""
    return _lib.kvidx_version().decode("ascii", "replace")


def strerror(code):
    """kvidx_strerror(code) as str ("unknown error" for unknown codes)."""
    return _lib.kvidx_strerror(int(code)).decode("utf-8", "replace")


def check(path):
    """Verifies the database in directory path offline (kvidx_check_report).
    Returns (ok, lines): (True, lines) when sound, (False, lines) on damage
    (KVIDX_ECORRUPT; the lines say what and where). Raises the error when
    the check could not run: KvidxLocked (a writer has it open),
    KvidxInvalid (not a database), KvidxVersion, KvidxIOError,
    KvidxNoMemory; the exception's .report holds the lines."""
    p = _path_arg(path)
    lines = []

    def collect(ud, msg):
        try:
            lines.append(msg.decode("utf-8", "replace") if msg is not None else "")
        except BaseException:
            pass
    cb = _LOG_FN(collect)
    rc = _lib.kvidx_check_report(p, cb, None)
    if rc == OK:
        return True, lines
    if rc == ECORRUPT:
        return False, lines
    e = _error(rc, "kvidx_check(%r)" % (path,))
    e.report = lines
    raise e
