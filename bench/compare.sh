#!/usr/bin/env bash
# berth and containerd side by side on this machine, in one run (issue: berth-bench).
#
# Installs what it needs from Debian (berth's build and test dependencies, containerd, runc,
# the CNI plugins, gcc for containerd's pause image), builds berth in release mode, and runs
# `berth-bench compare`, which starts a local registry, then berthd, then containerd (each
# on its own socket, root and network, never both at once), drives both with the same CRI
# calls, stops everything it started and writes docs/benchmarks.md (+ .svg).
#
#   bench/compare.sh [--runs N] [--burst C] [--loaded P]
#   bench/compare.sh --scale [--pods 110,250] [--steady SECONDS] [--soak [SECONDS]]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

scripts/dev deps
missing=()
for p in containerd runc containernetworking-plugins gcc libc6-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  policy=/usr/sbin/policy-rc.d made_policy=
  # containerd's package would start the system containerd; the benchmark starts its own.
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$made_policy" ] || rm -f "$policy"
fi
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p berth-agent -p berth-e2e
mkdir -p docs
if [ "${1:-}" = --scale ]; then
  # A full node: 110 and 250 pods, kubelet's polling, restarts (docs/benchmarks-scale.md).
  shift
  exec target/release/berth-bench compare --scale --runs 50 --out docs/benchmarks-scale.md "$@"
fi
exec target/release/berth-bench compare --runs 50 --burst 50 --loaded 50 --out docs/benchmarks.md "$@"
