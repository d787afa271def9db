#!/usr/bin/env bash
# Build a small multi-arch test image from real Debian packages, once, and
# cache it between runs.
#
# Output (an OCI image layout, gzip layers, built with umoci):
#   $CACHE/multiarch-$RECIPE/oci            the tags below
#   $CACHE/multiarch-$RECIPE/platforms.txt  one line per platform image:
#       "<tag> <os/arch[/variant]> <manifest digest> <busybox sha256> <deb version>"
#   $CACHE/multiarch                        a symlink to the newest build
#
#   multi-amd64:v1  linux/amd64   Debian's busybox-static (amd64 .deb)
#   multi-arm64:v1  linux/arm64   the same package for arm64
#   multi-armv7:v1  linux/arm/v7  the same package for armhf
#   multi:v1        an OCI image index of those three manifests, each
#                   descriptor with its platform (what `skopeo copy --all`
#                   pushes as one multi-arch tag)
#
# Each image is one layer: the package's files (/bin/busybox, its
# /usr/share/doc: the same copyright in all three, so the registry stores it
# once), /bin/sh -> busybox, and /etc/layerlink-platform naming the platform.
# Its config has os/architecture (and variant v7 for armhf: umoci has no
# --variant, so the config is rewritten with jq and the manifest and
# index.json follow), Entrypoint ["/bin/busybox"] and Cmd ["echo",
# "layerlink multiarch <platform>"], so running the bundle's process prints
# which image a device got.
#
# The .debs are fetched with `apt-get download` (foreign architectures arm64
# and armhf are added to dpkg, as cross/install.sh does) and kept in
# $CACHE/debs-multiarch; a finished build makes this a no-op (bump RECIPE
# when the recipe changes). $CACHE is ${LAYERLINK_CACHE:-/var/cache/layerlink}.
# Needs root (dpkg --add-architecture, apt-get), umoci, jq, dpkg-deb
# (scripts/install-deps.sh).
set -euo pipefail

RECIPE="m1-bookworm-busybox-static"
PACKAGE=busybox-static
CACHE=${LAYERLINK_CACHE:-/var/cache/layerlink}
FINAL="$CACHE/multiarch-$RECIPE"
# tag  Debian architecture  OCI os/architecture/variant
IMAGES=(
  "multi-amd64:v1 amd64 linux/amd64"
  "multi-arm64:v1 arm64 linux/arm64"
  "multi-armv7:v1 armhf linux/arm/v7"
)
INDEX_TAG=multi:v1

log() { printf '[build-multiarch-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.multiarch.lock"
if ! flock -n 9; then
  log "another build holds $CACHE/.multiarch.lock; waiting"
  flock 9
fi

if [[ -f "$FINAL/platforms.txt" ]]; then
  log "cached: $FINAL"
  touch "$FINAL"
  cat "$FINAL/platforms.txt"
  exit 0
fi

for tool in umoci jq dpkg-deb apt-get sha256sum; do
  command -v "$tool" >/dev/null || { log "missing $tool: run scripts/install-deps.sh"; exit 1; }
done
[[ $(id -u) -eq 0 ]] || { log "must run as root (dpkg --add-architecture, apt-get)"; exit 1; }

# ------------------------------------------------------------- the packages
DEBS="$CACHE/debs-multiarch"
mkdir -p "$DEBS"
fetch_deb() { # fetch_deb DEBARCH -> path of the cached .deb on stdout
  local arch=$1 f
  f=$(find "$DEBS" -maxdepth 1 -name "${PACKAGE}_*_$arch.deb" | sort | tail -1)
  if [[ -z $f ]]; then
    if [[ $arch != "$(dpkg --print-architecture)" ]] &&
      ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
      log "adding dpkg architecture $arch"
      dpkg --add-architecture "$arch"
    fi
    if ! apt-cache show "$PACKAGE:$arch" >/dev/null 2>&1; then
      log "apt-get update (no $PACKAGE:$arch in the package lists)"
      apt-get update -qq 2>&1 | grep -v '^ ' >&2 || true
    fi
    log "apt-get download $PACKAGE:$arch"
    (cd "$DEBS" && apt-get download -q "$PACKAGE:$arch" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) || true
    f=$(find "$DEBS" -maxdepth 1 -name "${PACKAGE}_*_$arch.deb" | sort | tail -1)
    [[ -n $f ]] || { log "apt-get download $PACKAGE:$arch failed"; return 1; }
  fi
  echo "$f"
}

WORK=$(mktemp -d "$CACHE/multiarch-build.XXXXXX")
trap 'rm -rf --one-file-system "$WORK"' EXIT
OCI="$WORK/out/oci"
mkdir -p "$WORK/out"
umoci init --layout "$OCI"

blob() { echo "$OCI/blobs/${1/://}"; }
manifest_of() { # TAG -> manifest digest
  jq -r --arg t "$1" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
    "$OCI/index.json"
}
put_blob() { # FILE -> digest (sha256:…) of the blob it is now
  local d
  d=$(sha256sum "$1" | cut -d' ' -f1)
  mv "$1" "$OCI/blobs/sha256/$d"
  echo "sha256:$d"
}

# Set the config's `variant` (umoci config cannot): rewrite the config, the
# manifest pointing at it and the tag's descriptor in index.json.
set_variant() { # TAG VARIANT
  local tag=$1 variant=$2 m c newc newm
  m=$(manifest_of "$tag")
  c=$(jq -r .config.digest "$(blob "$m")")
  jq -c --arg v "$variant" '.variant = $v' "$(blob "$c")" >"$WORK/config.json"
  newc=$(put_blob "$WORK/config.json")
  jq -c --arg d "$newc" --argjson s "$(stat -c %s "$(blob "$newc")")" \
    '.config.digest = $d | .config.size = $s' "$(blob "$m")" >"$WORK/manifest.json"
  newm=$(put_blob "$WORK/manifest.json")
  jq --arg t "$tag" --arg d "$newm" --argjson s "$(stat -c %s "$(blob "$newm")")" \
    '(.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t)) |= (.digest = $d | .size = $s)' \
    "$OCI/index.json" >"$WORK/index.json"
  mv "$WORK/index.json" "$OCI/index.json"
}

: >"$WORK/out/platforms.txt"
for spec in "${IMAGES[@]}"; do
  read -r tag arch platform <<<"$spec"
  deb=$(fetch_deb "$arch")
  version=$(dpkg-deb -f "$deb" Version)
  IFS=/ read -r os oarch variant <<<"$platform"
  log "$tag: $PACKAGE $version ($arch) as $platform"
  umoci new --image "$OCI:$tag"
  umoci unpack --image "$OCI:$tag" "$WORK/$arch"
  R="$WORK/$arch/rootfs"
  dpkg-deb -x "$deb" "$R"
  ln -s busybox "$R/bin/sh"
  mkdir -p "$R/etc"
  printf '%s\n' "$platform" >"$R/etc/layerlink-platform"
  umoci repack --image "$OCI:$tag" "$WORK/$arch"
  umoci config --image "$OCI:$tag" --author "layerlink test images" \
    --os "$os" --architecture "$oarch" \
    --config.entrypoint /bin/busybox --config.cmd echo --config.cmd "layerlink multiarch $platform" \
    --history.created_by "layerlink build-multiarch-image.sh config"
  [[ -n $variant ]] && set_variant "$tag" "$variant"
  echo "$tag $platform $(manifest_of "$tag") $(sha256sum "$R/bin/busybox" | cut -d' ' -f1) $version" \
    >>"$WORK/out/platforms.txt"
  rm -rf "${WORK:?}/$arch"
done
umoci gc --layout "$OCI"

# The index: one descriptor per platform manifest, tagged $INDEX_TAG.
while read -r tag platform digest _; do
  IFS=/ read -r os oarch variant <<<"$platform"
  jq -n --arg d "$digest" --argjson s "$(stat -c %s "$(blob "$digest")")" \
    --arg os "$os" --arg a "$oarch" --arg v "$variant" \
    '{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
      platform: ({architecture: $a, os: $os} + (if $v == "" then {} else {variant: $v} end))}'
done <"$WORK/out/platforms.txt" |
  jq -s -c '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: .}' \
    >"$WORK/image-index.json"
idx=$(put_blob "$WORK/image-index.json")
jq --arg d "$idx" --argjson s "$(stat -c %s "$(blob "$idx")")" --arg t "$INDEX_TAG" \
  '.manifests += [{mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s,
    annotations: {"org.opencontainers.image.ref.name": $t}}]' "$OCI/index.json" >"$WORK/index.json"
mv "$WORK/index.json" "$OCI/index.json"
log "$INDEX_TAG: index $idx"
jq . "$(blob "$idx")" >&2

rm -rf "$FINAL"
mv "$WORK/out" "$FINAL"
ln -sfn "multiarch-$RECIPE" "$CACHE/multiarch.new"
mv -T "$CACHE/multiarch.new" "$CACHE/multiarch"
find "$CACHE" -maxdepth 1 -name 'multiarch-*' -type d ! -path "$FINAL" ! -name 'multiarch-build.*' -mtime +3 \
  -exec rm -rf {} + || true
log "done: $FINAL"
cat "$FINAL/platforms.txt"
