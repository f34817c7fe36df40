#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, run as root. Fast when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iptables nftables python3-nftables iproute2 ipset conntrack
  python3-bpfcc bpfcc-tools bpftool clang llvm linux-headers-amd64
  containerd runc containernetworking-plugins busybox-static
  haproxy iperf3 sockperf socat python3-venv python3-dev
  prometheus
  golang-go
)

if [ "$(id -u)" != 0 ]; then
  echo "setup: must run as root (network namespaces, netfilter, bpf)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # prometheus (and promtool) are for tests/telemetry, which starts its own Prometheus in a
  # test netns: the package's system service is not wanted on this machine.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# bcc compiles against kernel headers; this kernel has no headers package of its own, so
# point the module dir at Debian's generic amd64 headers.
kver=$(uname -r)
hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
if [ -n "$hdr" ] && [ -n "$common" ]; then
  mkdir -p "/lib/modules/$kver"
  [ -e "/lib/modules/$kver/build" ] || ln -sfn "$hdr" "/lib/modules/$kver/build"
  [ -e "/lib/modules/$kver/source" ] || ln -sfn "$common" "/lib/modules/$kver/source"
fi

# The venv is built from Debian's python so that bcc (python3-bpfcc) is importable.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.meshnode-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  # xds-protos ships google.rpc/google.api modules; googleapis-common-protos (pulled in by
  # grpcio-status) would overwrite them with other versions (grpc/grpc#42830).
  if .venv/bin/pip show -q googleapis-common-protos >/dev/null 2>&1; then
    echo "setup: googleapis-common-protos clashes with xds-protos' google.* modules" >&2
    exit 1
  fi
  .venv/bin/python -c 'import google.rpc.status_pb2, envoy.service.discovery.v3.ads_pb2_grpc'
  echo "$want" > "$stamp"
fi

# The CNI plugin is a static Go binary (cni/build.sh): built here, copied to nodes by the
# agent's installer; rebuilt only when its sources changed.
cni/build.sh
