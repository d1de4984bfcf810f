# kvidx -- `make help` lists the targets.

VERSION := $(shell sed -n 's/^\#define KVIDX_VERSION_STRING "\(.*\)"/\1/p' kvidx.h)
MAJOR   := $(firstword $(subst ., ,$(VERSION)))

CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    := -std=c99 -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Werror
LDLIBS  := -lpthread
PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
INCDIR  ?= $(PREFIX)/include
DESTDIR ?=

# Debian packages the build needs, as package:file-that-proves-it.
DEPS       := libxxhash-dev:/usr/include/xxhash.h
BENCH_DEPS := liblmdb-dev:/usr/include/lmdb.h librocksdb-dev:/usr/include/rocksdb/c.h \
              libleveldb-dev:/usr/include/leveldb/c.h \
              libhiredis-dev:/usr/include/hiredis/hiredis.h redis-server:/usr/bin/redis-server

# Tests: black-box ones link kvidx.c; white-box ones #include it (-DKVIDX_TEST).
TESTS_BB := test_api test_model test_crash test_concurrency test_lists test_proto
TESTS_WB := test_recovery test_lr test_lists_wb test_compact test_check test_powercut test_faults
VARIANT  ?= test
SAN      ?=
OUT      := build/$(VARIANT)
TESTBINS := $(addprefix $(OUT)/,$(TESTS_BB) $(TESTS_WB))


.PHONY: bench-lr
.PHONY: bench-lists bench-list-one
.PHONY: bench-ops
.PHONY: fuzz bench-server
.PHONY: test-server
.PHONY: server cli
.PHONY: all deps lib test demo bench bench-deps bench-values asan tsan valgrind install \
        uninstall check-symbols clean help run-tests

all: deps libkvidx.a libkvidx.so.$(VERSION) kvidx.pc

deps:
	@sh tests/deps.sh $(DEPS)

kvidx.o: kvidx.c kvidx.h | deps
	$(CC) $(WARN) $(CFLAGS) -fPIC -c kvidx.c -o $@

libkvidx.a: kvidx.o
	rm -f $@ && ar rcs $@ kvidx.o

libkvidx.so.$(VERSION): kvidx.o
	$(CC) -shared -Wl,-soname,libkvidx.so.$(MAJOR) -o $@ kvidx.o $(LDLIBS)
	ln -sf $@ libkvidx.so.$(MAJOR)
	ln -sf libkvidx.so.$(MAJOR) libkvidx.so

kvidx.pc: Makefile kvidx.h
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(LIBDIR)' 'includedir=$(INCDIR)' '' \
	  'Name: kvidx' 'Description: embeddable store for integer-keyed data' \
	  'Version: $(VERSION)' 'Libs: -L$${libdir} -lkvidx' 'Libs.private: -lpthread' \
	  'Cflags: -I$${includedir}' > $@

# ---- tests ---------------------------------------------------------------

test: deps
	@$(MAKE) --no-print-directory VARIANT=test run-tests

asan: deps
	@$(MAKE) --no-print-directory VARIANT=asan \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
	  run-tests

tsan: deps
	@$(MAKE) --no-print-directory VARIANT=tsan SAN="-fsanitize=thread" run-tests

valgrind: deps
	@$(MAKE) --no-print-directory VARIANT=valgrind build/valgrind/test_api
	@mkdir -p tests/tmp
	valgrind --error-exitcode=1 --leak-check=full -q build/valgrind/test_api

# kvidx-server under real clients: redis-cli (one-shot, at a tty, --pipe), redis-py against a
# model, redis-benchmark, three servers behind nutcracker (tests/test_server.sh; installs the
# clients; about 20 s). TEST_SERVER_BENCH_N sets redis-benchmark -n (default 100000).
test-server: deps server
	sh tests/test_server.sh build/kvidx-server

# The C tests, then tests/test_cli.py and tests/test_server.sh: the kvidx tool
# and kvidx-server built like them (sanitized in asan/tsan, where
# redis-benchmark runs 20,000 requests); in `make test` only, tests/test_python.py
# (the ctypes binding on libkvidx.so) and tests/test_install.sh (make install into
# a scratch DESTDIR, pkg-config and drop-in builds).
BENCH_N := $(if $(SAN),20000,100000)
run-tests: $(TESTBINS) $(OUT)/kvidx-server $(OUT)/kvidx $(if $(SAN),,libkvidx.so.$(VERSION))
	@mkdir -p tests/tmp
	@sh tests/deps.sh python3:/usr/bin/python3
	@KVIDX_SERVER=$(OUT)/kvidx-server KVIDX_CLI=$(OUT)/kvidx TEST_SERVER_BENCH_N=$(BENCH_N) \
	  sh tests/run.sh $(TESTBINS) tests/test_cli.py tests/test_server.sh \
	  $(if $(SAN),,tests/test_python.py tests/test_install.sh)

$(OUT)/kvidx: examples/cli.c kvidx.c kvidx.h
	@mkdir -p $(OUT)
	$(CC) $(WARN) -D_GNU_SOURCE -O1 -g $(SAN) -I. examples/cli.c kvidx.c -o $@ $(LDLIBS)

$(OUT)/kvidx-server: examples/server.c kvidx.c kvidx.h
	@mkdir -p $(OUT)
	$(CC) $(WARN) -D_GNU_SOURCE -O1 -g $(SAN) -I. examples/server.c kvidx.c -o $@ $(LDLIBS)

# These reopen databases of a few MiB: have them open shards on threads
# as a large database would.
$(OUT)/test_model $(OUT)/test_crash: TFLAGS := -DKVIDX_OPEN_PARALLEL=0

$(addprefix $(OUT)/,$(TESTS_BB)): $(OUT)/%: tests/%.c kvidx.c kvidx.h tests/harness.h
	@mkdir -p $(OUT)
	$(CC) $(WARN) -D_GNU_SOURCE -O1 -g $(SAN) $(TFLAGS) -I. tests/$*.c kvidx.c -o $@ $(LDLIBS)

$(addprefix $(OUT)/,$(TESTS_WB)): $(OUT)/%: tests/%.c kvidx.c kvidx.h tests/harness.h tests/powercut.h
	@mkdir -p $(OUT)
	$(CC) $(WARN) -D_GNU_SOURCE -O1 -g $(SAN) -DKVIDX_TEST -I. tests/$*.c -o $@ $(LDLIBS)

# ---- demo, bench ---------------------------------------------------------

demo: deps build/quickstart
	./build/quickstart

build/quickstart: examples/quickstart.c kvidx.c kvidx.h
	@mkdir -p build
	$(CC) $(WARN) $(CFLAGS) -I. examples/quickstart.c kvidx.c -o $@ $(LDLIBS)

# kvidx-server: the Redis protocol over TCP, one epoll loop per thread (examples/server.c).
server: deps build/kvidx-server

build/kvidx-server: examples/server.c kvidx.c kvidx.h | deps
	@mkdir -p build
	$(CC) $(WARN) -D_GNU_SOURCE $(CFLAGS) -I. examples/server.c kvidx.c -o $@ $(LDLIBS)

# kvidx, the command-line tool (examples/cli.c; docs/CLI.md).
cli: deps build/kvidx

build/kvidx: examples/cli.c kvidx.c kvidx.h | deps
	@mkdir -p build
	$(CC) $(WARN) -D_GNU_SOURCE $(CFLAGS) -I. examples/cli.c kvidx.c -o $@ $(LDLIBS)

# kvidx against LMDB, RocksDB and LevelDB, one run (bench/bench_kv.c; several minutes).
bench: deps bench-deps build/bench_kv
	./build/bench_kv

bench-deps:
	@sh tests/deps.sh $(BENCH_DEPS)

build/bench_kv: bench/bench_kv.c bench/bench.h kvidx.c kvidx.h | deps bench-deps
	@mkdir -p build
	$(CC) $(WARN) -D_GNU_SOURCE -O2 -g -DNDEBUG -I. bench/bench_kv.c kvidx.c -o $@ \
	  -llmdb -lrocksdb -lleveldb $(LDLIBS)

# kvidx lists against Redis sorted sets, Redis sets and LMDB dupsort (bench/bench_lists.c; a few minutes).
# Starts a redis-server on 127.0.0.1 per Redis engine and kills it after that engine. Never part of `make test`.
bench-lists: deps bench-deps build/bench_lists
	./build/bench_lists

# One list grown one id per call to 1M ids (bench/bench_list_one.c; seconds).
bench-list-one: deps build/bench_list_one
	./build/bench_list_one

build/bench_list_one: bench/bench_list_one.c bench/bench.h kvidx.c kvidx.h | deps
	@mkdir -p build
	$(CC) $(WARN) -D_GNU_SOURCE -O2 -g -I. bench/bench_list_one.c kvidx.c -o $@ $(LDLIBS)

build/bench_lists: bench/bench_lists.c bench/bench.h kvidx.c kvidx.h | deps bench-deps
	@mkdir -p build
	$(CC) $(WARN) -D_GNU_SOURCE -O2 -g -DNDEBUG -I. bench/bench_lists.c kvidx.c -o $@ \
	  -llmdb -lhiredis -lm $(LDLIBS)

# Compaction (space, time, writer and reader latency under it) and KVIDX_SYNC puts from 1, 2, 8
# threads against LMDB's durable commit, beside the raw fdatasync cost (bench/bench_ops.c; about 30 s).
bench-ops: deps bench-deps build/bench_ops
	./build/bench_ops

build/bench_ops: bench/bench_ops.c bench/bench.h kvidx.c kvidx.h | deps bench-deps
	@mkdir -p build
	$(CC) $(WARN) -D_GNU_SOURCE -O2 -g -DNDEBUG -I. bench/bench_ops.c kvidx.c -o $@ -llmdb $(LDLIBS)

# The value store alone.
bench-values: deps build/bench_values
	./build/bench_values

# Left-Right against a rwlock build of the same code (bench/lr.sh).
bench-lr: deps build/bench_lr build/bench_lr_rwlock
	bash bench/lr.sh --secs 2

build/bench_lr: bench/bench_lr.c bench/bench.h kvidx.c kvidx.h
	@mkdir -p build
	$(CC) $(WARN) -O2 -g -DNDEBUG -I. bench/bench_lr.c -o $@ $(LDLIBS)

build/bench_lr_rwlock: bench/bench_lr.c bench/bench.h kvidx.c kvidx.h
	@mkdir -p build
	$(CC) $(WARN) -O2 -g -DNDEBUG -DKVIDX_BENCH_RWLOCK -I. bench/bench_lr.c -o $@ $(LDLIBS)

build/bench_values: bench/bench_values.c bench/bench.h kvidx.c kvidx.h
	@mkdir -p build
	$(CC) $(WARN) -O2 -g -DNDEBUG -I. bench/bench_values.c kvidx.c -o $@ $(LDLIBS)

# libFuzzer on the protocol parser and dispatcher (tests/fuzz_proto.c; clang, ASan, UBSan) for
# FUZZ_SECS seconds (default 60) over a scratch copy of tests/fuzz_corpus (build/fuzz_corpus: new inputs
# stay out of the repository); crash and leak reproducers land in build/fuzz_artifacts/, the scratch
# database in build/fuzz_tmp/. FUZZ_ARGS adds libFuzzer options.
FUZZ_SECS ?= 60
fuzz: deps build/fuzz_proto
	@rm -rf build/fuzz_corpus build/fuzz_tmp && mkdir -p build/fuzz_corpus build/fuzz_artifacts build/fuzz_tmp
	cp tests/fuzz_corpus/* build/fuzz_corpus/
	KVIDX_FUZZ_DIR=$(CURDIR)/build/fuzz_tmp ./build/fuzz_proto -max_total_time=$(FUZZ_SECS) -timeout=10 \
	  -rss_limit_mb=2048 -print_final_stats=1 -dict=tests/fuzz_proto.dict \
	  -artifact_prefix=build/fuzz_artifacts/ $(FUZZ_ARGS) build/fuzz_corpus

build/fuzz_proto: tests/fuzz_proto.c kvidx.c kvidx.h | deps
	@sh tests/deps.sh clang:/usr/bin/clang
	@mkdir -p build
	clang $(WARN) -D_GNU_SOURCE -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	  -fno-omit-frame-pointer -I. tests/fuzz_proto.c kvidx.c -o $@ $(LDLIBS)

# kvidx-server against redis-server (appendonly yes, appendfsync everysec) under redis-benchmark:
# SET, GET, MSET, SADD, SMEMBERS with and without -P 16, then checks what both hold
# (bench/bench_server.sh; N=100000 requests a run; a few minutes).
bench-server: deps server
	@sh tests/deps.sh redis-server:/usr/bin/redis-server redis-tools:/usr/bin/redis-benchmark
	bash bench/bench_server.sh

# ---- install -------------------------------------------------------------

BINDIR ?= $(PREFIX)/bin

# Everything install puts under $(DESTDIR); uninstall removes exactly these.
INSTALLED = $(INCDIR)/kvidx.h $(LIBDIR)/libkvidx.a $(LIBDIR)/libkvidx.so.$(VERSION) \
            $(LIBDIR)/libkvidx.so.$(MAJOR) $(LIBDIR)/libkvidx.so $(LIBDIR)/pkgconfig/kvidx.pc \
            $(BINDIR)/kvidx $(BINDIR)/kvidx-server

# kvidx.pc embeds PREFIX, LIBDIR and INCDIR. build/kvidx.pc.vars holds the values it was
# written with and is rewritten only when they change, which rewrites kvidx.pc: a plain
# `make` then `make install PREFIX=/opt/x` installs a kvidx.pc that says /opt/x.
PC_VARS = prefix=$(PREFIX) libdir=$(LIBDIR) includedir=$(INCDIR)
.PHONY: pc-vars-force
pc-vars-force:
kvidx.pc: build/kvidx.pc.vars
build/kvidx.pc.vars: pc-vars-force
	@mkdir -p build
	@[ "$$(cat $@ 2>/dev/null)" = '$(PC_VARS)' ] || echo '$(PC_VARS)' > $@

install: all build/kvidx build/kvidx-server
	install -d $(DESTDIR)$(INCDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(BINDIR)
	install -m 644 kvidx.h $(DESTDIR)$(INCDIR)/kvidx.h
	install -m 644 libkvidx.a $(DESTDIR)$(LIBDIR)/libkvidx.a
	install -m 755 libkvidx.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libkvidx.so.$(VERSION)
	ln -sf libkvidx.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libkvidx.so.$(MAJOR)
	ln -sf libkvidx.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libkvidx.so
	install -m 644 kvidx.pc $(DESTDIR)$(LIBDIR)/pkgconfig/kvidx.pc
	install -m 755 build/kvidx build/kvidx-server $(DESTDIR)$(BINDIR)

# Files only: directories stay (they may hold other packages' files).
uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))

# The shared library exports kvidx_* and nothing else, and its soname is libkvidx.so.$(MAJOR).
# kvidx.h compiles as C89 and C99 (tests/header_c89.c) and as C++98 and C++17
# (tests/header_cxx.cc, linked against libkvidx.a and run), -pedantic -Werror.
HDR_WARN := -pedantic -Werror -Wall -Wextra
check-symbols: libkvidx.so.$(VERSION) libkvidx.a
	@bad=$$(nm -D --defined-only libkvidx.so.$(VERSION) | awk '{print $$3}' | grep -v '^kvidx_' || true); \
	if [ -n "$$bad" ]; then echo "exported symbols outside kvidx_*:"; echo "$$bad"; exit 1; fi; \
	echo "check-symbols: only kvidx_* exported"
	@soname=$$(readelf -d libkvidx.so.$(VERSION) | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p'); \
	if [ "$$soname" != libkvidx.so.$(MAJOR) ]; then \
	  echo "check-symbols: soname of libkvidx.so.$(VERSION) is '$$soname', not libkvidx.so.$(MAJOR)"; exit 1; fi; \
	echo "check-symbols: soname libkvidx.so.$(MAJOR)"
	$(CC) -std=c89 $(HDR_WARN) -fsyntax-only -I. tests/header_c89.c
	$(CC) -std=c99 $(HDR_WARN) -fsyntax-only -I. tests/header_c89.c
	@sh tests/deps.sh g++:/usr/bin/g++
	@mkdir -p build
	$(CXX) -std=c++98 $(HDR_WARN) -I. tests/header_cxx.cc libkvidx.a -o build/header_cxx98 $(LDLIBS)
	./build/header_cxx98
	$(CXX) -std=c++17 $(HDR_WARN) -I. tests/header_cxx.cc libkvidx.a -o build/header_cxx17 $(LDLIBS)
	./build/header_cxx17
	@echo "check-symbols: kvidx.h compiles as C89, C99, C++98, C++17"

clean:
	rm -rf build tests/tmp kvidx-demo-data kvidx.o libkvidx.a libkvidx.so* kvidx.pc

help:
	@echo "make            build libkvidx.a, libkvidx.so.$(VERSION), kvidx.pc"
	@echo "make demo       build and run examples/quickstart.c (./kvidx-demo-data)"
	@echo "make cli        build build/kvidx, the command-line tool (examples/cli.c; kvidx --help)"
	@echo "make server     build build/kvidx-server (examples/server.c; --help lists its options)"
	@echo "make test       build and run the tests (ends with 'N passed, N failed')"
	@echo "make asan       the tests under AddressSanitizer + UBSan"
	@echo "make tsan       the tests under ThreadSanitizer"
	@echo "make valgrind   test_api under valgrind memcheck"
	@echo "make test-server  kvidx-server under redis-cli, redis-py, redis-benchmark, nutcracker"
	@echo "make bench      kvidx against LMDB, RocksDB, LevelDB (bench/bench_kv.c; installs them)"
	@echo "make bench-values  the value store alone (bench/bench_values.c)"
	@echo "make bench-lr   reads under a writer: Left-Right against a rwlock build"
	@echo "make bench-lists  kvidx lists against Redis and LMDB (bench/bench_lists.c; installs them)"
	@echo "make bench-list-one  one list grown to 1M ids one id per call"
	@echo "make bench-ops  compaction, and KVIDX_SYNC puts (1, 2, 8 threads) against LMDB (bench/bench_ops.c)"
	@echo "make fuzz       libFuzzer on the protocol layer for FUZZ_SECS (60) seconds (tests/fuzz_proto.c; clang)"
	@echo "make bench-server  kvidx-server against redis-server under redis-benchmark (bench/bench_server.sh)"
	@echo "make install    kvidx.h, libkvidx.a/.so, kvidx.pc, kvidx, kvidx-server into \$$DESTDIR\$$PREFIX (/usr/local)"
	@echo "make uninstall  remove the files install put there (directories stay)"
	@echo "make check-symbols  libkvidx.so exports only kvidx_* under soname libkvidx.so.$(MAJOR); kvidx.h compiles as C89/C99/C++98/C++17"
	@echo "make clean      remove build outputs and test data"
	@echo "Seeds: tests print theirs; KVIDX_SEED=N replays. KVIDX_TEST_DIR sets the scratch dir."
