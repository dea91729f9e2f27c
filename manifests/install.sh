#!/usr/bin/env bash
# Installs a built berthd and its configuration on this node (run as root from the
# workspace after `cargo build --release`). Existing configuration is never overwritten.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
install -D -m 0755 target/release/berthd /usr/local/bin/berthd
install -d -m 0755 /etc/berth
[ -e /etc/berth/config.toml ] || install -m 0644 manifests/config.toml /etc/berth/config.toml
[ -e /etc/crictl.yaml ] || install -m 0644 manifests/crictl.yaml /etc/crictl.yaml
if [ -d /run/systemd/system ]; then
  install -m 0644 manifests/systemd/berthd.service /etc/systemd/system/berthd.service
  systemctl daemon-reload
  echo "installed; start with: systemctl enable --now berthd"
else
  echo "installed; no systemd here: run /usr/local/bin/berthd under your supervisor"
fi
/usr/local/bin/berthd check || true
