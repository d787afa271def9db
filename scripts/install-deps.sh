#!/usr/bin/env bash
# Install the tools the build, the test images, the end-to-end tests and the
# benchmark (skopeo, umoci, crun, ostree as peers) need, the PostgreSQL
# server the metadata tests start throwaway clusters of, and the Python tools
# of the e2e tests in venvs outside the clone, under
# ${LAYERLINK_CACHE:-/var/cache/layerlink}: oras-venv (the ORAS SDK, the OCI
# artifact client of oras_e2e) and sign-venv (`cryptography`, the signer of
# trust_e2e).
#
# Idempotent and fast when everything is present: each tool is checked with
# `command -v`, and apt-get runs (update + install) only when something is
# missing. Meant for a Debian bookworm machine, run as root (CI is root).
# Cross toolchains are installed separately by cross/install.sh.
set -euo pipefail

# command -> Debian package providing it
declare -A PKG_FOR=(
  [skopeo]=skopeo
  [umoci]=umoci
  [debootstrap]=debootstrap
  [jq]=jq
  [/usr/bin/time]=time
  [setfattr]=attr
  [getfattr]=attr
  [rsync]=rsync
  [curl]=curl
  [python3]=python3
  [flock]=util-linux
  [gzip]=gzip
  [tar]=tar
  [zstd]=zstd
  [cc]=gcc
  # scripts/bench.sh: OSTree as a peer (archive repo, pulls, static deltas).
  [ostree]=ostree
  # tests/tests/readonly_e2e.rs: a real OCI runtime runs checked-out bundles
  # (in a private mount namespace: unshare; without CAP_SYS_ADMIN: setpriv).
  [crun]=crun
  [unshare]=util-linux
  [setpriv]=util-linux
)
# Optional: used for the podman push test when it works here.
declare -A OPTIONAL_PKG_FOR=([podman]=podman)

missing=()
for cmd in "${!PKG_FOR[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG_FOR[$cmd]}")
done
# `python3 -m venv` needs ensurepip, which Debian ships in python3-venv.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
# PostgreSQL server (the metadata backend's tests: tests/src/postgres.rs
# starts throwaway clusters with initdb/pg_ctl from /usr/lib/postgresql/*/bin,
# which are not on PATH, hence not in PKG_FOR).
pg_server_present() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
if ! pg_server_present; then
  missing+=(postgresql)
fi
optional=()
for cmd in "${!OPTIONAL_PKG_FOR[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || optional+=("${OPTIONAL_PKG_FOR[$cmd]}")
done

# cargo-fuzz (scripts/fuzz.sh, run by scripts/test.sh): from crates.io,
# built once into ~/.cargo/bin.
if ! command -v cargo-fuzz >/dev/null 2>&1 && ! [[ -x "$HOME/.cargo/bin/cargo-fuzz" ]]; then
  echo "install-deps: cargo install cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

# Garage (a real S3-compatible object store; the tests' S3 server, started
# per test by tests/src/garage.rs): from crates.io, built once into the
# cache (sqlite metadata engine, libraries bundled: no system sqlite or
# zstd needed). Its build is long (see README); the cached binary is what
# CI uses afterwards. LAYERLINK_GARAGE overrides the binary the tests use.
GARAGE_VERSION=2.5.0
GARAGE_ROOT="${LAYERLINK_CACHE:-/var/cache/layerlink}/garage-$GARAGE_VERSION"
if ! [[ -x "$GARAGE_ROOT/bin/garage" ]]; then
  echo "install-deps: cargo install garage $GARAGE_VERSION into $GARAGE_ROOT"
  CARGO_TARGET_DIR="${LAYERLINK_CACHE:-/var/cache/layerlink}/garage-build/target" \
    cargo install garage --version "$GARAGE_VERSION" --locked \
    --no-default-features --features bundled-libs,sqlite --root "$GARAGE_ROOT"
fi

# Python tools of the e2e tests, each pinned with its dependencies by a
# requirements file, each in a venv outside the clone, rebuilt only when its
# requirements change or it does not import its module:
# - oras-venv: the ORAS Python SDK (tests/oras/requirements.txt), the OCI
#   artifact client of oras_e2e (LAYERLINK_ORAS_PYTHON overrides where);
# - sign-venv: Python `cryptography` (tests/sign/requirements.txt), the
#   independent ECDSA P-256 signer of trust_e2e (LAYERLINK_SIGN_PYTHON).
install_venv() {
  local venv="${LAYERLINK_CACHE:-/var/cache/layerlink}/$1"
  local req
  req="$(dirname "$0")/../tests/$2/requirements.txt"
  local module="$3"
  mkdir -p "$(dirname "$venv")"
  # Work trees sharing the cache may run this at once.
  exec 9>"$venv.lock"
  flock 9
  if [[ -x "$venv/bin/python" ]] && cmp -s "$req" "$venv/layerlink-requirements.txt" &&
    "$venv/bin/python" -c "import $module" >/dev/null 2>&1; then
    flock -u 9
    return
  fi
  echo "install-deps: $module venv at $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  "$venv/bin/python" -c "import $module"
  cp "$req" "$venv/layerlink-requirements.txt"
  flock -u 9
}
install_python_tools() {
  install_venv oras-venv oras oras.client
  install_venv sign-venv sign cryptography.hazmat.primitives.asymmetric.ec
}

if ((${#missing[@]} == 0 && ${#optional[@]} == 0)); then
  install_python_tools
  echo "install-deps: all tools present"
  exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

# Unique, sorted package list.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
mapfile -t optional < <(printf '%s\n' "${optional[@]}" | sort -u | sed '/^$/d')
echo "install-deps: installing ${missing[*]} ${optional[*]}"

# A mirror caught mid-sync fails `apt-get update` for one index (seen: the
# armhf security index the cross builds add) while the lists already here
# still serve: go on, and let the install itself decide.
"${SUDO[@]}" apt-get update -qq ||
  echo "install-deps: apt-get update reported errors; installing from the package lists present"
if ((${#missing[@]} > 0)); then
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    # The tests start their own clusters: no system cluster running on
    # port 5432 (postgresql-common reads createcluster.d at install).
    "${SUDO[@]}" mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' |
      "${SUDO[@]}" tee /etc/postgresql-common/createcluster.d/layerlink.conf >/dev/null
  fi
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ((${#optional[@]} > 0)); then
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${optional[@]}" ||
    echo "install-deps: optional packages (${optional[*]}) could not be installed; continuing"
fi

for cmd in "${!PKG_FOR[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "install-deps: $cmd still missing" >&2; exit 1; }
done
pg_server_present || { echo "install-deps: PostgreSQL server (initdb) still missing" >&2; exit 1; }
install_python_tools
echo "install-deps: done"
