#!/usr/bin/env bash
# Installs the Debian packages imgfs needs, only those missing, so that
# `make demo` and `make test` work on a fresh machine and cost nothing the
# second time.  Runs `apt-get update` at most once.
set -euo pipefail
pkgs=(fuse3 libfuse3-dev pkg-config containerd runc docker-registry skopeo mmdebstrap zstd
      strace e2fsprogs python3-venv stargz-snapshotter pigz openssl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "sysdeps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts services of these packages; imgfs tests start their own.
for svc in docker-registry containerd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
[ -e /dev/fuse ] || { echo "sysdeps: /dev/fuse is missing: FUSE cannot work here" >&2; exit 1; }
