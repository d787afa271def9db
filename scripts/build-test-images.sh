#!/usr/bin/env bash
# Build the real test images once and cache them between runs.
#
# Output (an OCI image layout, gzip layers, built with umoci):
#   $CACHE/images/oci            tags below
#   $CACHE/images/manifest.txt   one line per tag: "<tag> <manifest digest> <layers> <bytes>"
#
#   tiny:v1    a few hand-made files (no debootstrap): dir, file, exec file,
#              symlink, hard link, empty file, xattr — one layer
#   tiny:v2    tiny:v1 + a second layer: one file changed, one removed
#              (whiteout), one added
#   base-a:v1  Debian bookworm minbase (debootstrap run #1), one layer
#   base-a:v2  "a CI rebuild": base-a:v1's rootfs copied with all metadata plus
#              the `hello` package installed with dpkg, re-packed as a NEW
#              single-layer image (new layer digest, almost every file equal)
#   base-b:v1  a SEPARATE debootstrap run #2 with --include=less,netbase (no
#              layer shared with base-a, most files equal) as its base layer,
#              plus a small /app layer: symlink, hard link, xattr user.test,
#              empty file, a whiteout of a base file, a >100-char path
#
# For the benchmark (scripts/bench.sh), two layers each (base + app, the app
# installed with apt-get in the image's chroot from deb.debian.org):
#   upd:v1     debootstrap run #3 (bookworm as released: perl-base etc.) +
#              an app layer: python3.11-minimal, libpython3.11-stdlib,
#              openssl (libssl3) at their `bookworm` versions
#   upd:v2     an independent rebuild with security updates: debootstrap run
#              #4 + `apt-get upgrade` from bookworm-security/-updates (perl-base
#              and whatever else has updates) as the base layer, the same app
#              packages at their bookworm-security versions as the app layer
#              (the build fails unless perl-base, libpython3.11-stdlib and
#              libssl3 differ between v1 and v2; versions in packages-upd.txt)
#   sib:v1     a sibling of upd:v1: debootstrap run #5 (another base built
#              independently from the same suite) + a different app layer:
#              curl, sqlite3 at their `bookworm` versions
#
# $CACHE is ${LAYERLINK_CACHE:-/var/cache/layerlink}. The result lives in
# $CACHE/images-$RECIPE (the harness, tests/src/images.rs, reads the RECIPE
# line of this script and opens that directory, so work trees with different
# recipes share one cache without rebuilding each other's images);
# `$CACHE/images` is a symlink to the newest build, swapped atomically when a
# build finishes. Bump RECIPE whenever the recipe changes. Other recipes'
# outputs are left alone unless untouched for 3 days. A flock keeps parallel
# runs from colliding; a finished cache makes this a no-op. Downloaded .debs
# are kept in $CACHE/debs and apt's package lists in $CACHE/apt-lists so a
# rebuild does not download again. Needs root (debootstrap, chroot, device
# nodes).
set -euo pipefail

RECIPE="r2-bookworm-minbase-upd-sib"
SUITE=bookworm
MIRROR=${LAYERLINK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${LAYERLINK_CACHE:-/var/cache/layerlink}
FINAL="$CACHE/images-$RECIPE"

log() { printf '[build-test-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then
  log "another build holds $CACHE/.lock; waiting"
  flock 9
fi

if [[ -f "$FINAL/manifest.txt" ]]; then
  log "cached: $FINAL"
  touch "$FINAL" # in use: keeps other work trees' builds from pruning it
  cat "$FINAL/manifest.txt"
  exit 0
fi

for tool in skopeo umoci debootstrap jq setfattr rsync chroot; do
  command -v "$tool" >/dev/null || { log "missing $tool: run scripts/install-deps.sh"; exit 1; }
done
if [[ $(id -u) -ne 0 ]]; then
  log "must run as root (debootstrap, chroot, device nodes)"
  exit 1
fi

WORK=$(mktemp -d "$CACHE/build.XXXXXX")
cleanup() {
  # debootstrap mounts /proc and /sys in its target; never leave them behind.
  if [[ -d "$WORK" ]]; then
    { grep -o " $WORK[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$WORK"
  fi
}
trap cleanup EXIT
OCI="$WORK/out/oci"
mkdir -p "$WORK/out" "$CACHE/debs/partial" "$CACHE/apt-lists/partial"
umoci init --layout "$OCI"

# debootstrap in the background, polling so long runs show progress.
bootstrap() { # bootstrap NAME TARGET [extra args...]
  local name=$1 target=$2
  shift 2
  log "debootstrap $name → $target ($*) — takes a few minutes"
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" "$@" "$SUITE" "$target" "$MIRROR" \
    >"$WORK/$name.debootstrap.log" 2>&1 &
  local pid=$! waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 10
    waited=$((waited + 10))
    ((waited % 60 == 0)) && log "  $name: still running (${waited}s): $(tail -n1 "$WORK/$name.debootstrap.log")"
  done
  if ! wait "$pid"; then
    log "debootstrap $name failed; last lines:"
    tail -n 30 "$WORK/$name.debootstrap.log" >&2
    exit 1
  fi
  # Leave nothing host-specific or volatile a real image would not ship.
  rm -rf "$target/var/cache/apt/archives/"*.deb "$target/var/log/bootstrap.log" "$target/debootstrap"
  log "debootstrap $name done ($(du -sh "$target" | cut -f1))"
}

# apt-get in an image's chroot against the Debian mirror, with the given
# suites (e.g. "bookworm bookworm-security"); the .debs and package lists are
# bind-mounted from the cache and leave nothing in the image.
SECURITY_MIRROR=${LAYERLINK_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
chroot_apt() { # chroot_apt ROOTFS "SUITES" APT-GET-ARGS...
  local root=$1 suites=$2
  shift 2
  local list="$root/etc/apt/sources.list" s
  : >"$list"
  for s in $suites; do
    case $s in
      *-security) echo "deb $SECURITY_MIRROR $s main" >>"$list" ;;
      *) echo "deb $MIRROR $s main" >>"$list" ;;
    esac
  done
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  mount --bind "$CACHE/debs" "$root/var/cache/apt/archives"
  mount --bind "$CACHE/apt-lists" "$root/var/lib/apt/lists"
  local rc=0
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    apt-get -q -o APT::Sandbox::User=root -o Acquire::Retries=3 -o Dpkg::Use-Pty=0 "$@" \
    >>"$WORK/apt.log" 2>&1 || rc=$?
  umount "$root/var/lib/apt/lists" "$root/var/cache/apt/archives"
  if ((rc != 0)); then
    log "apt-get $* in $root failed; last lines:"
    tail -n 30 "$WORK/apt.log" >&2
    exit 1
  fi
  # As a Dockerfile's `rm -rf /var/lib/apt/lists/*` would.
  rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin
}

# A base layer (debootstrap run NAME, then apt-get upgrade from SUITES if
# more than one) and an app layer (PACKAGES installed from SUITES).
two_layer_image() { # two_layer_image TAG NAME "SUITES" PACKAGES...
  local tag=$1 name=$2 suites=$3
  shift 3
  new_image "$tag" "$WORK/$name"
  bootstrap "$name" "$WORK/$name/rootfs"
  local R="$WORK/$name/rootfs"
  log "$tag: apt-get update ($suites)"
  chroot_apt "$R" "$suites" update
  if [[ $suites == *" "* ]]; then
    log "$tag: apt-get upgrade (base layer)"
    chroot_apt "$R" "$suites" -y upgrade
  fi
  log "repack $tag (base layer)"
  umoci repack --refresh-bundle --image "$OCI:$tag" "$WORK/$name"
  log "$tag: apt-get install $* (app layer)"
  chroot_apt "$R" "$suites" -y install --no-install-recommends "$@"
  umoci repack --image "$OCI:$tag" "$WORK/$name"
  configure "$tag"
}

# A new empty image, unpacked so its rootfs can be filled.
new_image() { # new_image TAG BUNDLE
  umoci new --image "$OCI:$1"
  umoci unpack --image "$OCI:$1" "$2"
}

configure() { # configure TAG
  umoci config --image "$OCI:$1" --author "layerlink test images" \
    --config.cmd /bin/sh --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
}

# ---------------------------------------------------------------- tiny:v1/v2
log "tiny:v1"
new_image tiny:v1 "$WORK/tiny"
R="$WORK/tiny/rootfs"
mkdir -p "$R/etc" "$R/bin" "$R/data/sub"
printf 'tiny test image\n' >"$R/etc/motd"
printf '#!/bin/sh\necho hello from tiny\n' >"$R/bin/hello"
chmod 0755 "$R/bin/hello"
printf 'shared content\n' >"$R/data/a.txt"
printf 'shared content\n' >"$R/data/sub/same-content-other-mode.txt"
chmod 0600 "$R/data/sub/same-content-other-mode.txt"
chown 1000:1000 "$R/data/sub/same-content-other-mode.txt"
ln "$R/data/a.txt" "$R/data/a-hardlink.txt"
ln -s ../etc/motd "$R/data/motd-link"
: >"$R/data/empty"
head -c 300000 /dev/urandom >"$R/data/random.bin"
printf 'to be removed in v2\n' >"$R/data/remove-me.txt"
printf 'v1\n' >"$R/data/changes.txt"
setfattr -n user.test -v tiny "$R/data/a.txt"
touch -d '2020-01-02 03:04:05' "$R/etc/motd"
umoci repack --image "$OCI:tiny:v1" "$WORK/tiny"
configure tiny:v1

log "tiny:v2"
umoci unpack --image "$OCI:tiny:v1" "$WORK/tiny2"
R="$WORK/tiny2/rootfs"
printf 'v2\n' >"$R/data/changes.txt"
rm "$R/data/remove-me.txt"
printf 'added in v2\n' >"$R/data/added.txt"
umoci repack --image "$OCI:tiny:v2" "$WORK/tiny2"
configure tiny:v2

# ----------------------------------------------------------------- base-a:v1
new_image base-a:v1 "$WORK/base-a"
bootstrap base-a "$WORK/base-a/rootfs"
log "repack base-a:v1"
umoci repack --image "$OCI:base-a:v1" "$WORK/base-a"
configure base-a:v1

# ----------------------------------------------------------------- base-a:v2
log "base-a:v2: copy base-a's rootfs + dpkg -i hello, one new layer"
new_image base-a:v2 "$WORK/base-a2"
rsync -aHAX "$WORK/base-a/rootfs/" "$WORK/base-a2/rootfs/"
(
  cd "$CACHE/debs"
  ls hello_*.deb >/dev/null 2>&1 || apt-get download hello 2>/dev/null ||
    { apt-get update -qq && apt-get download hello; }
)
HELLO_DEB=$(ls "$CACHE/debs"/hello_*.deb | head -n1)
cp "$HELLO_DEB" "$WORK/base-a2/rootfs/tmp/hello.deb"
chroot "$WORK/base-a2/rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  dpkg -i /tmp/hello.deb >"$WORK/hello.log" 2>&1 || { cat "$WORK/hello.log" >&2; exit 1; }
rm -f "$WORK/base-a2/rootfs/tmp/hello.deb"
chroot "$WORK/base-a2/rootfs" /usr/bin/hello >/dev/null
umoci repack --image "$OCI:base-a:v2" "$WORK/base-a2"
configure base-a:v2

# ----------------------------------------------------------------- base-b:v1
new_image base-b:v1 "$WORK/base-b"
bootstrap base-b "$WORK/base-b/rootfs" --include=less,netbase
log "repack base-b:v1 (base layer)"
# --refresh-bundle: the next repack then holds only the /app changes.
umoci repack --refresh-bundle --image "$OCI:base-b:v1" "$WORK/base-b"
log "base-b:v1: /app layer"
R="$WORK/base-b/rootfs"
mkdir -p "$R/app/bin" "$R/app/data"
printf '{"name":"demo","version":1}\n' >"$R/app/config.json"
printf '#!/bin/sh\nexec /usr/bin/less "$@"\n' >"$R/app/bin/run"
chmod 0755 "$R/app/bin/run"
cp "$R/usr/bin/ls" "$R/app/bin/ls-copy" # same content as a base file, other metadata
chmod 0700 "$R/app/bin/ls-copy"
printf 'hello app\n' >"$R/app/data/hello.txt"
ln "$R/app/data/hello.txt" "$R/app/data/hello-hardlink.txt"
ln -s data/hello.txt "$R/app/current"
ln -s /usr/bin/less "$R/app/bin/pager"
: >"$R/app/data/empty"
printf 'with an xattr\n' >"$R/app/data/xattr.txt"
setfattr -n user.test -v layerlink "$R/app/data/xattr.txt"
chown 1234:2345 "$R/app/data/xattr.txt"
LONGDIR="$R/app/very-long-directory-name-to-push-the-path-past-one-hundred-characters/and-another-level-of-nesting"
mkdir -p "$LONGDIR"
printf 'long path\n' >"$LONGDIR/a-file-with-a-rather-long-name-that-needs-a-pax-header-in-the-tar-archive.txt"
rm "$R/etc/issue.net" # whiteout of a base file
chmod 0750 "$R/app/data"
umoci repack --image "$OCI:base-b:v1" "$WORK/base-b"
configure base-b:v1

# ------------------------------------------------------ upd:v1, upd:v2, sib:v1
UPD_PKGS=(python3.11-minimal libpython3.11-stdlib openssl)
two_layer_image upd:v1 upd1 "bookworm" "${UPD_PKGS[@]}"
two_layer_image upd:v2 upd2 "bookworm bookworm-updates bookworm-security" "${UPD_PKGS[@]}"
two_layer_image sib:v1 sib1 "bookworm" curl sqlite3
# The update must upgrade packages with large binaries in both layers.
versions() { chroot "$1" dpkg-query -W -f '${Package} ${Version}\n' | LC_ALL=C sort; }
versions "$WORK/upd1/rootfs" >"$WORK/upd1.versions"
versions "$WORK/upd2/rootfs" >"$WORK/upd2.versions"
{
  echo "# package  upd:v1  upd:v2 (only the packages whose version differs)"
  LC_ALL=C join "$WORK/upd1.versions" "$WORK/upd2.versions" | awk '$2 != $3'
} >"$WORK/out/packages-upd.txt"
for p in perl-base libpython3.11-stdlib libssl3; do
  grep -q "^$p " "$WORK/out/packages-upd.txt" || {
    log "upd:v1 and upd:v2 hold the same $p; the mirror's bookworm-security lacks an update of it?"
    cat "$WORK/out/packages-upd.txt" >&2
    exit 1
  }
done
log "upgraded between upd:v1 and upd:v2: $(($(wc -l <"$WORK/out/packages-upd.txt") - 1)) packages"

# --------------------------------------------------------------------- finish
umoci gc --layout "$OCI"
log "summary"
for tag in tiny:v1 tiny:v2 base-a:v1 base-a:v2 base-b:v1 upd:v1 upd:v2 sib:v1; do
  mdigest=$(jq -r --arg t "$tag" \
    '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
    "$OCI/index.json")
  mfile="$OCI/blobs/${mdigest/://}"
  layers=$(jq '.layers | length' "$mfile")
  bytes=$(jq '[.layers[].size] | add' "$mfile")
  echo "$tag $mdigest $layers $bytes" >>"$WORK/out/manifest.txt"
  printf '  %-10s %s  %d layer(s)  %s bytes compressed\n' "$tag" "$mdigest" "$layers" "$bytes" >&2
done
du -sh "$OCI" >&2
echo "$RECIPE" >"$WORK/out/RECIPE"

rm -rf "$FINAL"
mv "$WORK/out" "$FINAL"
ln -sfn "images-$RECIPE" "$CACHE/images.new"
mv -T "$CACHE/images.new" "$CACHE/images"
# Other recipes' outputs may still serve other work trees: remove only those
# nobody built or used for 3 days.
find "$CACHE" -maxdepth 1 -name 'images-*' -type d ! -path "$FINAL" -mtime +3 -exec rm -rf {} + || true
log "done: $CACHE/images"
cat "$FINAL/manifest.txt"
