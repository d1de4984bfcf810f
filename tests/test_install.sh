#!/bin/sh
# test_install.sh -- `make install` into a scratch DESTDIR, and what a user then does with it:
#   install      every file and link in place and nothing else (soname link, real
#                libkvidx.so.MAJOR.MINOR.PATCH, modes, kvidx.pc's paths)
#   unprivileged the same install as an unprivileged user (only when run as root)
#   pkg-config   examples/quickstart.c built with `pkg-config --cflags --libs kvidx` against the
#                staged libkvidx.so (ldd shows the staged libkvidx.so.0), and with
#                `pkg-config --static --libs` against the staged libkvidx.a; both print the demo
#   drop-in      kvidx.h, kvidx.c, quickstart.c alone in a directory: `cc quickstart.c kvidx.c
#                -lpthread` builds without a warning and prints the demo
#   --help       the staged kvidx-server --help and kvidx --help (skip kvidx without examples/cli.c)
#   uninstall    `make uninstall` leaves empty directories and the files it did not install
#   prefix       `make install PREFIX=/opt/x` after the /usr/local one: kvidx.pc says /opt/x
# Runs make in the repository root (builds there what `make install` builds: a few seconds
# when it is built). Prints "ok   CASE" or "FAIL CASE: why" and its log, and ends with
# "test_install: N passed, N failed"; exits 0 only if none failed.
set -u
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)

# A parent make's flags (jobserver, VARIANT=, SAN=) and install paths from the environment
# must not steer these runs: they test the defaults under PREFIX.
unset MAKEFLAGS MFLAGS GNUMAKEFLAGS MAKELEVEL MAKEOVERRIDES DESTDIR PREFIX LIBDIR INCDIR BINDIR

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
stage=$tmp/stage
pre=$stage/usr/local

version=$(sed -n 's/^#define KVIDX_VERSION_STRING "\(.*\)"/\1/p' kvidx.h)
major=${version%%.*}
have_cli=0; [ -e examples/cli.c ] && have_cli=1

passed=0; failed=0
# run CASE FUNCTION: FUNCTION runs in a subshell (`bad` and `skip` end only the case); its
# output goes to $tmp/log, shown under a FAIL, whose reason is its last line.
run() {
    "$2" > "$tmp/log" 2>&1
    case $? in
    0) echo "ok   $1"; passed=$((passed + 1)) ;;
    2) echo "skip $1: $(tail -n 1 "$tmp/log")" ;;
    *) echo "FAIL $1: $(tail -n 1 "$tmp/log")"; sed -e 's/^/    /' "$tmp/log" | tail -n 40
       failed=$((failed + 1)) ;;
    esac
}
bad() { echo "$*"; exit 1; }
skip() { echo "$*"; exit 2; }
# mk LOG ARGS...: make ARGS in the repository root, output in LOG.
mk() { log=$1; shift; make -C "$root" --no-print-directory "$@" > "$log" 2>&1 || { cat "$log"; bad "make $* failed"; }; }

# What examples/quickstart.c prints on a fresh directory.
{
    echo "kvidx $version: opened ./kvidx-demo-data"
    echo "wrote 100 values"
    echo 'get 42 -> ok "user-294"'
    echo "after delete, get 42 -> not found"
    echo "scan [40, 60], first 10 keys in order:"
    for k in 40 41 43 44 45 46 47 48 49 50; do echo "  $k = \"user-$((k * 7))\""; done
    echo "sync -> ok"
    echo "close -> ok"
} > "$tmp/expected"

# demo DIR CMD...: runs CMD in DIR (a fresh ./kvidx-demo-data) and compares its output.
demo() {
    d=$1; shift
    (cd "$d" && rm -rf kvidx-demo-data && "$@") > "$d/out" 2>&1 || { rc=$?; cat "$d/out"; bad "$* exited $rc"; }
    diff "$tmp/expected" "$d/out" || bad "$* printed something else than the demo (diff above)"
}

files_expected() {
    r=${1#/}
    { echo "$r/include/kvidx.h"; echo "$r/lib/libkvidx.a"; echo "$r/lib/libkvidx.so"
      echo "$r/lib/libkvidx.so.$major"; echo "$r/lib/libkvidx.so.$version"
      echo "$r/lib/pkgconfig/kvidx.pc"; echo "$r/bin/kvidx-server"
      [ $have_cli = 0 ] || echo "$r/bin/kvidx"; } | sort
}

# check_tree STAGE PREFIX: the files install put under STAGE for PREFIX, and only those.
check_tree() {
    s=$1; p=$2; d=$s$p
    (cd "$s" && find . ! -type d | sed 's|^\./||' | sort) > "$tmp/found"
    files_expected "$p" > "$tmp/want"
    diff "$tmp/want" "$tmp/found" || bad "installed files differ from the expected list (diff above)"
    for f in include/kvidx.h lib/libkvidx.a lib/libkvidx.so.$version lib/pkgconfig/kvidx.pc \
             bin/kvidx-server; do
        [ -f "$d/$f" ] && [ ! -L "$d/$f" ] || bad "$d/$f is not a regular file"
    done
    cmp -s kvidx.h "$d/include/kvidx.h" || bad "installed kvidx.h differs from ./kvidx.h"
    for fm in include/kvidx.h:644 lib/libkvidx.a:644 lib/libkvidx.so.$version:755 \
              lib/pkgconfig/kvidx.pc:644 bin/kvidx-server:755; do
        m=$(stat -c %a "$d/${fm%:*}"); [ "$m" = "${fm#*:}" ] || bad "$d/${fm%:*} has mode $m, not ${fm#*:}"
    done
    [ -L "$d/lib/libkvidx.so.$major" ] && [ "$(readlink "$d/lib/libkvidx.so.$major")" = "libkvidx.so.$version" ] ||
        bad "lib/libkvidx.so.$major is not a link to libkvidx.so.$version"
    [ -L "$d/lib/libkvidx.so" ] && [ "$(readlink "$d/lib/libkvidx.so")" = "libkvidx.so.$major" ] ||
        bad "lib/libkvidx.so is not a link to libkvidx.so.$major"
    soname=$(readelf -d "$d/lib/libkvidx.so.$version" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
    [ "$soname" = "libkvidx.so.$major" ] || bad "soname of the installed library is '$soname'"
    for b in kvidx-server kvidx; do
        [ $b = kvidx ] && [ $have_cli = 0 ] && continue
        [ -f "$d/bin/$b" ] && [ -x "$d/bin/$b" ] || bad "bin/$b is not an executable file"
    done
    printf '%s\n' "prefix=$p" "libdir=$p/lib" "includedir=$p/include" "Version: $version" > "$tmp/pcwant"
    grep -E '^(prefix|libdir|includedir)=|^Version:' "$d/lib/pkgconfig/kvidx.pc" > "$tmp/pcgot"
    diff "$tmp/pcwant" "$tmp/pcgot" || bad "kvidx.pc does not say $p (diff above)"
}

case_install() (
    mk "$tmp/install.log" install DESTDIR="$stage" PREFIX=/usr/local
    check_tree "$stage" /usr/local
)

# An unprivileged user installs into a DESTDIR of its own (the tree is built by now).
case_unprivileged() (
    [ "$(id -u)" = 0 ] || skip "not root: the install case ran unprivileged"
    command -v setpriv > /dev/null || skip "no setpriv"
    asnobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
    asnobody test -r "$root/Makefile" || skip "nobody cannot read $root"
    u=$tmp/user; mkdir -p "$u" && chmod 711 "$tmp" && chown nobody "$u" || bad "cannot prepare $u"
    asnobody make -C "$root" --no-print-directory install DESTDIR="$u/stage" PREFIX=/usr/local \
        > "$tmp/user.log" 2>&1 || { cat "$tmp/user.log"; bad "make install as nobody failed"; }
    check_tree "$u/stage" /usr/local
)

# pc ARGS...: pkg-config over the stage only.
pc() {
    PKG_CONFIG_PATH=$pre/lib/pkgconfig PKG_CONFIG_LIBDIR=$pre/lib/pkgconfig \
        PKG_CONFIG_SYSROOT_DIR=$stage pkg-config "$@"
}

case_pkg_config() (
    command -v pkg-config > /dev/null || bad "no pkg-config (tests/deps.sh pkgconf failed)"
    [ -e "$pre/lib/libkvidx.so.$version" ] || bad "nothing staged (install failed)"
    cflags=$(pc --cflags kvidx) && libs=$(pc --libs kvidx) && slibs=$(pc --static --libs kvidx) ||
        bad "pkg-config kvidx failed"
    echo "cflags: $cflags"; echo "libs: $libs"; echo "static libs: $slibs"
    [ "$(echo $cflags)" = "-I$pre/include" ] || bad "--cflags is '$cflags', not -I$pre/include"
    [ "$(echo $libs)" = "-L$pre/lib -lkvidx" ] || bad "--libs is '$libs'"
    [ "$(echo $slibs)" = "-L$pre/lib -lkvidx -lpthread" ] || bad "--static --libs is '$slibs'"
    pv=$(pc --modversion kvidx); [ "$pv" = "$version" ] || bad "--modversion is '$pv'"

    # quickstart.c alone in its directory: "kvidx.h" can only come from -I.
    d=$tmp/shared; mkdir -p "$d" && cp examples/quickstart.c "$d/" || exit 1
    (cd "$d" && cc $cflags quickstart.c -o quickstart $libs) || bad "shared build failed"
    needed=$(readelf -d "$d/quickstart" | sed -n 's/.*(NEEDED).*\[\(libkvidx[^]]*\)\].*/\1/p')
    [ "$needed" = "libkvidx.so.$major" ] || bad "quickstart needs '$needed', not libkvidx.so.$major"
    got=$(LD_LIBRARY_PATH=$pre/lib ldd "$d/quickstart" | sed -n 's/^[[:space:]]*libkvidx\.so\.[^ ]* => \([^ ]*\) .*/\1/p')
    [ "$got" = "$pre/lib/libkvidx.so.$major" ] || bad "ldd: libkvidx resolves to '$got', not the staged one"
    LD_LIBRARY_PATH=$pre/lib demo "$d" ./quickstart

    d=$tmp/static; mkdir -p "$d" && cp examples/quickstart.c "$d/" || exit 1
    (cd "$d" && cc $cflags quickstart.c -o quickstart -static $slibs) || bad "static build failed"
    readelf -d "$d/quickstart" | grep -q NEEDED && bad "the static build needs shared libraries"
    nm "$d/quickstart" | grep -q ' T kvidx_open$' || bad "the static build holds no kvidx_open"
    demo "$d" ./quickstart
)

case_drop_in() (
    d=$tmp/dropin; mkdir -p "$d" && cp kvidx.h kvidx.c examples/quickstart.c "$d/" || exit 1
    (cd "$d" && cc quickstart.c kvidx.c -lpthread) > "$d/cc.log" 2>&1 ||
        { cat "$d/cc.log"; bad "cc quickstart.c kvidx.c -lpthread failed"; }
    [ -s "$d/cc.log" ] && { cat "$d/cc.log"; bad "cc quickstart.c kvidx.c -lpthread warns"; }
    demo "$d" ./a.out
)

# help BINARY: the staged BINARY --help exits 0 and names itself.
help() (
    [ -e "$pre/bin/$1" ] || { [ "$1" = kvidx ] && [ $have_cli = 0 ] && skip "no examples/cli.c"; } ||
        bad "no $pre/bin/$1"
    out=$(cd "$tmp" && timeout 10 "$pre/bin/$1" --help 2>&1) || { rc=$?; echo "$out"; bad "$1 --help exited $rc"; }
    echo "$out" | grep -q "$1" || { echo "$out"; bad "$1 --help does not name $1"; }
)
case_help_server() { help kvidx-server; }
case_help_cli() { help kvidx; }

case_uninstall() (
    [ -e "$pre/include/kvidx.h" ] || bad "nothing staged (install failed)"
    # Files install did not put there: uninstall must leave them.
    for f in lib/libkvidx.so.0.3.0 lib/pkgconfig/other.pc include/other.h bin/kvidx-old; do
        echo keep > "$pre/$f" || exit 1
    done
    mk "$tmp/uninstall.log" uninstall DESTDIR="$stage" PREFIX=/usr/local
    left=$(cd "$stage" && find . ! -type d | sed 's|^\./||' | sort | tr '\n' ' ')
    [ "$left" = "usr/local/bin/kvidx-old usr/local/include/other.h usr/local/lib/libkvidx.so.0.3.0 usr/local/lib/pkgconfig/other.pc " ] ||
        bad "after uninstall: $left"
    rm -f "$pre/lib/libkvidx.so.0.3.0" "$pre/lib/pkgconfig/other.pc" "$pre/include/other.h" "$pre/bin/kvidx-old"
    [ -z "$(find "$stage" ! -type d)" ] || bad "files left"
)

# kvidx.pc in the tree says /usr/local by now: another PREFIX must rewrite it.
case_prefix() (
    s=$tmp/opt
    mk "$tmp/prefix.log" install DESTDIR="$s" PREFIX=/opt/x
    check_tree "$s" /opt/x
    mk "$tmp/prefix-un.log" uninstall DESTDIR="$s" PREFIX=/opt/x
    [ -z "$(find "$s" ! -type d)" ] || bad "files left after uninstall PREFIX=/opt/x"
)

sh tests/deps.sh pkgconf:/usr/bin/pkg-config || echo "test_install: could not install pkgconf"

run install case_install
run unprivileged case_unprivileged
run pkg-config case_pkg_config
run drop-in case_drop_in
run "kvidx-server --help" case_help_server
run "kvidx --help" case_help_cli
run uninstall case_uninstall
run prefix case_prefix

echo "test_install: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
