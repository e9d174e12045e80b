#!/usr/bin/env bash
# Installs everything mpconvert, its lab, tests and benchmarks need on Debian 12 (as root), then builds.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then echo "install.sh: run as root (it installs Debian packages)" >&2; exit 1; fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  iproute2 nftables iperf3 mptcpize tcpdump curl socat shadowsocks-libev haproxy hping3 procps kmod ca-certificates \
  iputils-ping util-linux systemd dpkg dnsmasq-base bind9-dnsutils wireguard-go wireguard-tools openvpn isc-dhcp-client dhcpcd-base chromium fonts-dejavu-core prometheus freeradius >/dev/null
npm ci --no-audit --no-fund
npm run build
