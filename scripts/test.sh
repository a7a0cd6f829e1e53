#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need
# (Debian's CNI plugins, iproute2, Prometheus, and gcc with a static libc for the
# ehost-device binary, as root; the Python package with its test extras, which
# builds that binary in place), checks that kubectl is there, checks lint, then
# runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ "$(id -u)" = 0 ]; then
  need=()
  [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
  command -v ip >/dev/null 2>&1 || need+=(iproute2)
  # prometheus and promtool: the alert rules' tests and a real scrape of the daemon.
  { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
  command -v gcc >/dev/null 2>&1 || need+=(gcc)
  # libc.a: what `gcc -static` links (Debian's libc6-dev)
  [ -n "$(gcc -print-file-name=libc.a 2>/dev/null | grep /)" ] || need+=(libc6-dev)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    # The tests start their own Prometheus on loopback and stop it: keep the
    # package from starting its system service while it installs (policy-rc.d
    # answering 101 forbids it), and from starting at boot afterwards.
    policy=/usr/sbin/policy-rc.d
    added_policy=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy"
      chmod 755 "$policy"
      added_policy=1
    fi
    status=0
    { apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
    } || status=$?
    [ -z "$added_policy" ] || rm -f "$policy"
    [ "$status" = 0 ] || exit "$status"
    if [ -d /run/systemd/system ]; then
      systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    else
      deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
      update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
  fi
fi
# tests/test_deploy.py renders daemonset/ with kubectl's built-in kustomize.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl not found: install kubectl 1.27 or newer (kustomize v5 built in)" >&2
  exit 1
fi
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
"$PY" -m ruff check .
"$PY" -m ruff format --check .
# Unit, integration and netns tests first (fast feedback), then the end-to-end
# stage that boots QEMU VMs through ../shared/lab/vm-run.sh (NETDP_E2E=0 skips it).
"$PY" -m pytest -q --ignore=tests/e2e "$@"
if [ "${NETDP_E2E:-1}" != 0 ]; then
  "$PY" -m pytest -q tests/e2e
fi
