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
# $CACHE is ${LAYERLINK_CACHE:-/var/cache/layerlink}. The result lives in
# $CACHE/images-$RECIPE and `$CACHE/images` is a symlink swapped atomically
# when a build finishes; bump RECIPE whenever the recipe changes. A flock
# keeps parallel runs from colliding; a finished cache makes this a no-op.
# Downloaded .debs are kept in $CACHE/debs so a rebuild does not download
# again. Needs root (debootstrap, chroot, device nodes).
set -euo pipefail

RECIPE="r1-bookworm-minbase"
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

if [[ -f "$FINAL/manifest.txt" && "$(readlink "$CACHE/images" 2>/dev/null)" == "images-$RECIPE" ]]; then
  log "cached: $CACHE/images ($RECIPE)"
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
mkdir -p "$WORK/out" "$CACHE/debs"
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

# --------------------------------------------------------------------- finish
umoci gc --layout "$OCI"
log "summary"
for tag in tiny:v1 tiny:v2 base-a:v1 base-a:v2 base-b:v1; do
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
# Old recipes' outputs are no longer referenced.
for old in "$CACHE"/images-*; do
  [[ "$old" == "$FINAL" ]] || rm -rf "$old"
done
log "done: $CACHE/images"
cat "$FINAL/manifest.txt"
