#!/bin/sh
# Builds CRIU's criu binary, for `bench/run.py --criu DEST`, and copies it to
# DEST. Linux 6.13+ needs CRIU 4.1 or later: Debian 12's CRIU 3.17 stops at
# start-up on the [vvar_vclock] area ("vdso: Unexpected rt vDSO area bounds").
#
#   bench/build-criu.sh DEST    (as root: installs the build dependencies)
#
# Environment:
#   CRIU_VERSION  the tag to build (default v4.2)
#   CRIU_GIT      a git directory (a bare clone will do) to take that tag from,
#                 for a machine that cannot reach GitHub; else the release
#                 tarball is downloaded, and failing that the tag is cloned
#   CRIU_BUILD    where to build, outside the repository (default /tmp/criu-build)
#   JOBS          parallel make jobs (default: the number of CPUs)
set -eu

[ $# -eq 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
DEST=$1
VERSION=${CRIU_VERSION:-v4.2}
BUILD=${CRIU_BUILD:-/tmp/criu-build}
JOBS=${JOBS:-$(nproc)}
SRC=$BUILD/criu-$VERSION

# The packages of CRIU's criu/Makefile.packages (what the criu binary links),
# plus the optional ones its Makefile.config looks for: libbsd
# (setproctitle), gnutls (encrypted page transfer), nftables (network locking).
# Not libdrm (the amdgpu plugin), nor what only CRIU's tests or docs need.
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -q -y --no-install-recommends \
	build-essential pkg-config \
	libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-protobuf \
	libnl-3-dev libcap-dev uuid-dev libnet1-dev \
	libbsd-dev libgnutls28-dev libnftables-dev

mkdir -p "$BUILD"
rm -rf "$SRC"
mkdir "$SRC"
if [ -n "${CRIU_GIT:-}" ]; then
	git --git-dir="$CRIU_GIT" archive --format=tar "$VERSION" | tar -x -C "$SRC"
elif curl -fsSL "https://github.com/checkpoint-restore/criu/archive/refs/tags/$VERSION.tar.gz" \
		-o "$BUILD/criu-$VERSION.tar.gz"; then
	tar -xzf "$BUILD/criu-$VERSION.tar.gz" -C "$SRC" --strip-components=1
else
	rmdir "$SRC"
	git clone -q --depth 1 --branch "$VERSION" https://github.com/checkpoint-restore/criu.git "$SRC"
fi

# Only the binary: `make criu` builds compel, soccr and the images it needs
# (no crit, no libcriu, no plugins, no man pages).
make -C "$SRC" -j"$JOBS" criu
mkdir -p "$(dirname "$DEST")"
install -m 0755 "$SRC/criu/criu" "$DEST"
"$DEST" --version
