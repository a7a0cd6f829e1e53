#!/usr/bin/env bash
# The classic NFV lab on one machine: boots a throw-away QEMU VM (a default-route
# virtio NIC and 3 spare ones on a hub inside QEMU; nothing reaches the host's
# network), runs the netdp daemon in it against the built-in kubelet stand-in,
# and walks through it step by step: devices found, registration, Allocate env,
# the ehost-device CNI moving a NIC into a pod as net1, `ip a` in the pod, a
# ping between two pods, DEL. It is the e2e test's `virtio` scenario.
#
#   sudo scripts/lab.sh            # needs root and x86_64; first run installs QEMU (~1-2 min)
#
# NETDP_VM_RUN points at the VM runner (default: ../shared/lab/vm-run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VM_RUN=${NETDP_VM_RUN:-../shared/lab/vm-run.sh}
[ -x "$VM_RUN" ] || { echo "lab.sh: no VM runner at $VM_RUN (set NETDP_VM_RUN)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "lab.sh: run me as root (QEMU set-up, network namespaces)" >&2; exit 2; }
# The real interpreter, not a pyenv/venv shim: each shim start costs seconds in the VM.
PY=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')
"$PY" -c 'import deviceplugin' 2>/dev/null || "$PY" -m pip install -q -e .
# Compiling inside the emulated guest is ~15x slower than here.
"$PY" -m compileall -q deviceplugin tests/e2e >/dev/null
out=$(mktemp -d /tmp/netdp-lab.XXXXXX)
trap 'rm -rf "$out"' EXIT
echo "== booting the lab VM ($VM_RUN --nics 3)"
"$VM_RUN" --nics 3 --timeout 600 --rwdir "$out" --timing -- \
  "$PY" tests/e2e/guest.py virtio --out "$out"
