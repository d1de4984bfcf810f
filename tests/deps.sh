#!/bin/sh
# deps.sh PKG:FILE ... -- installs each Debian package PKG whose FILE is
# missing (apt-get, as root or through sudo). Used by `make` so that the
# README's commands work on a fresh Debian 12 machine.
set -e
missing=""
for spec in "$@"; do
    pkg=${spec%%:*}
    file=${spec#*:}
    [ -e "$file" ] || missing="$missing $pkg"
done
[ -n "$missing" ] || exit 0
echo "deps.sh: installing$missing" >&2
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "deps.sh: need root (or sudo) to install:$missing" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q $missing >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q $missing; }
