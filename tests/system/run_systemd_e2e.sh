#!/usr/bin/env bash
# Runs tests/system/systemd_e2e.sh inside a qemu VM whose PID 1 is a real systemd 252 (Debian 12), via
# sdvm, a VM harness kept outside this repository ($SDVM below). On the host: builds the wheelhouse (this package and its
# dependencies) under /var/tmp, hands README.md, systemd/ and config/ to the guest, and prints the
# guest's PASS/FAIL lines. Exit 0 only when every check passed.
#
# Needs root (sdvm's build.sh installs qemu and debootstrap with apt-get when they are missing and
# builds the guest image once, ~2 min, cached in /var/tmp/sdvm-cache). Nothing is skipped: if qemu
# or the image cannot be had, this fails and says why.
#
# Environment: SDVM (default ../shared/sdvm beside the checkout), E2E_TIMEOUT (hard limit on the
# VM run in seconds, default 1800: a passing run takes 10-20 minutes, the longer on a busy host), E2E_KEEP=1 (keep the run directory with serial.log, journal).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)   # the checkout: this is tests/system/
SDVM=${SDVM:-$ROOT/../shared/sdvm}
TIMEOUT=${E2E_TIMEOUT:-1800}
# The guest's sshd and rsync for the remote-target checks (the remote host is the guest itself).
# Part of the image's cache key: build.sh and run.sh (which calls build.sh) must both see it.
export SDVM_EXTRA_PACKAGES=openssh-server,rsync
T0=$(date +%s)
say() { echo "[systemd-e2e $(( $(date +%s) - T0 ))s] $*" >&2; }
die() {
  { echo; echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! systemd end-to-end test FAILED, NOT skipped: $*"
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; } >&2
  exit 1
}

[ -x "$SDVM/run.sh" ] && [ -x "$SDVM/build.sh" ] || die "no sdvm at $SDVM (expected ../shared/sdvm beside the checkout)"
[ "$(id -u)" = 0 ] || die "must run as root: sdvm installs qemu with apt-get and builds its image with debootstrap"

WORK=$(mktemp -d /var/tmp/foldermirror-e2e.XXXXXX)
RUNDIR=$WORK/run
cleanup() { [ -n "${E2E_KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT

# 1. qemu and the guest image. build.sh installs the host packages itself; a first build takes
#    about 2 minutes, later calls return the cached image at once.
say "guest image (sdvm build.sh; installs qemu and builds the image if needed)"
if ! "$SDVM/build.sh" > "$WORK/build.out"; then   # its progress and errors go to stderr as they come
  die "sdvm build.sh failed: qemu/debootstrap could not be installed or the image could not be built"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is still missing after build.sh"
say "image $(tail -1 "$WORK/build.out"); $(qemu-system-x86_64 --version | head -1)"

# 2. The wheelhouse, from a copy of the sources (pip wheel leaves build/ and *.egg-info behind).
#    The guest runs Python 3.11: wheels built for another host Python would not install there.
#    The wheel carries README.md, config/example.yaml and systemd/ as data files (install-units
#    reads them there); LICENSE is its license-files.
mkdir -p "$WORK/src" "$WORK/wheelhouse" "$WORK/extra"
cp -a "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/LICENSE" "$ROOT/daemon" "$ROOT/config" \
  "$ROOT/systemd" "$WORK/src/"
if python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  python3 -m pip wheel -q -w "$WORK/wheelhouse" "$WORK/src" 2> "$WORK/pip.err" \
    || { cat "$WORK/pip.err" >&2; die "pip wheel failed"; }
else
  python3 -m pip wheel -q --no-deps -w "$WORK/wheelhouse" "$WORK/src" 2> "$WORK/pip.err" &&
  python3 -m pip download -q --only-binary=:all: --python-version 3.11 -d "$WORK/wheelhouse" \
    "$WORK"/wheelhouse/foldermirror-*.whl 2>> "$WORK/pip.err" \
    || { cat "$WORK/pip.err" >&2; die "building the Python 3.11 wheelhouse failed"; }
fi
say "wheelhouse: $(cd "$WORK/wheelhouse" && ls | tr '\n' ' ')"

# 3. What the README's install steps read from a checkout.
cp -a "$ROOT/README.md" "$ROOT/systemd" "$WORK/extra/"
mkdir -p "$WORK/extra/config" && cp -a "$ROOT/config/example.yaml" "$WORK/extra/config/"

# 4. Boot, test, power off.
say "booting the VM (limit ${TIMEOUT}s)"
SDVM_RUNDIR=$RUNDIR SDVM_EXTRA_DIR=$WORK/extra SDVM_TIMEOUT=$TIMEOUT SDVM_GUEST_TIMEOUT=$((TIMEOUT - 40)) \
  "$SDVM/run.sh" "$WORK/wheelhouse" "$ROOT/tests/system/systemd_e2e.sh"
rc=$?
say "VM part done in $(( $(date +%s) - T0 ))s, sdvm exit status $rc"
if [ "$rc" != 0 ]; then
  echo "--- guest test output (tail) ---" >&2
  tail -40 "$RUNDIR/out/test-output.txt" >&2 2>/dev/null || tail -40 "$RUNDIR/serial.log" >&2
  [ -n "${E2E_KEEP:-}" ] || { E2E_KEEP=1; echo "kept $RUNDIR (serial.log, out/journal.txt)" >&2; }
  [ "$rc" = 2 ] && die "sdvm could not start the VM (usage or image error, see above)"
  die "some checks failed (see the FAIL lines above)"
fi
