#!/bin/bash
# Runs inside the VM lane's guest (scripts/vm), as root under systemd, once the node is
# up: installs berth from its package, points it at the guest's registry, and runs the
# requested suites. Writes results/report, results/status and logs on the run's disk.
set -u
P=/mnt/payload
R=$P/results
mkdir -p "$R"
exec > >(tee "$R/run.log") 2>&1
report() { echo "$*" | tee -a "$R/report"; }
status=0
fail() { report "FAIL: $*"; status=1; }
driver=$(cat "$P/driver")
focus=$(cat "$P/focus" 2>/dev/null || true)

# sudo (critest loads its AppArmor test profiles with it) must resolve the host's name.
[ -s /etc/hosts ] || printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >/etc/hosts
grep -qw "$(hostname)" /etc/hosts || echo "127.0.1.1 $(hostname)" >>/etc/hosts

report "== guest: Linux $(uname -r), $(systemctl --version | head -1), cgroup fs $(stat -fc %T /sys/fs/cgroup), AppArmor $(cat /sys/module/apparmor/parameters/enabled 2>/dev/null || echo absent)"
report "== cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"

# The guest's registry: the suite's images, on loopback.
cat >/tmp/registry.yml <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $P/registry
http:
  addr: 127.0.0.1:5000
YML
if [ -d "$P/registry" ]; then
  setsid /usr/bin/docker-registry serve /tmp/registry.yml >"$R/registry.log" 2>&1 &
fi

# berth, from its package: with no other runtime here, installing it starts berthd.
t0=$(date +%s%N)
dpkg -i "$P/berth.deb" >"$R/dpkg.log" 2>&1 || fail "dpkg -i berth.deb (results/dpkg.log)"
for _ in $(seq 100); do [ -S /run/berth/berth.sock ] && break; sleep 0.1; done
if systemctl is-active --quiet berthd; then
  report "package: installed; berthd.service active ($(systemctl is-enabled berthd)) in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
else
  fail "package: berthd.service is not active after install: $(systemctl status berthd --no-pager 2>&1 | tail -5)"
fi

# berth's config for the run: the cgroup driver, the suite's registries mirrored here.
{
  printf '[cgroup]\ndriver = "%s"\n' "$driver"
  for r in registry.k8s.io k8s.gcr.io gcr.io public.ecr.aws docker.io; do
    printf '\n[registries."%s"]\nmirrors = ["http://127.0.0.1:5000"]\n' "$r"
  done
} >/etc/berth/config.toml
systemctl restart berthd
for _ in $(seq 100); do [ -S /run/berth/berth.sock ] && break; sleep 0.1; done
systemctl is-active --quiet berthd || fail "berthd does not run with the run's config: $(journalctl -u berthd --no-pager | tail -5)"

for suite in $(cat "$P/suites"); do
  case "$suite" in
    check)
      berthd check >"$R/check.txt" 2>&1 || fail "berthd check (results/check.txt)"
      report "== berthd check"
      sed 's/^/   /' "$R/check.txt" | tee -a "$R/report" >/dev/null
      ;;
    critest)
      args=(--runtime-endpoint unix:///run/berth/berth.sock --image-endpoint unix:///run/berth/berth.sock
            --ginkgo.skip "public image with digest" --ginkgo.no-color)
      [ -z "$focus" ] || args+=(--ginkgo.focus "$focus")
      t=$(date +%s)
      "$P/critest" "${args[@]}" >"$R/critest.log" 2>&1
      rc=$?
      report "== critest v1.36.0 (driver $driver), $(( $(date +%s) - t )) s:"
      grep -E '^Ran [0-9]+ of|Passed \| [0-9]+ Failed' "$R/critest.log" | sed 's/^/   /' | tee -a "$R/report" >/dev/null
      grep -E '^\s*\[FAIL\]' "$R/critest.log" | sed 's/^ */   /' | sort -u | tee -a "$R/report" >/dev/null
      [ "$rc" = 0 ] || fail "critest exited $rc (results/critest.log)"
      ;;
    e2e:*)
      IFS=: read -r _ test filter <<<"$suite"
      t=$(date +%s)
      # As on the host, against the debug berthd; the guest lacks some hosts' extras
      # (Python and Node clients), whose tests skip.
      (cd /tmp && BERTH_BIN=$P/berthd BERTH_E2E_CGROUP_DRIVER=$driver BERTH_E2E_CRIU=1 BERTH_E2E_CRICTL=$P/crictl RUST_BACKTRACE=1 "$P/e2e/$test" ${filter:+"$filter"} --test-threads 1 --show-output) \
        >"$R/e2e-$test.log" 2>&1
      rc=$?
      report "== e2e $test${filter:+ ($filter)}, $(( $(date +%s) - t )) s:"
      grep -E '^test result:|^test .* FAILED$|SKIP' "$R/e2e-$test.log" | sort -u | sed 's/^/   /' | tee -a "$R/report" >/dev/null
      [ "$rc" = 0 ] || fail "e2e $test exited $rc (results/e2e-$test.log)"
      ;;
    *) fail "unknown suite $suite" ;;
  esac
done

journalctl -u berthd --no-pager >"$R/berthd.log" 2>&1
report "BERTH-VM-STATUS $status"
echo "$status" >"$R/status"
sync
