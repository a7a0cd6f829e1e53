"""The host half of the e2e rig: boot a throw-away QEMU VM, run one scenario in it.

The VM comes from the lab's `vm-run.sh` (`../shared/lab/vm-run.sh` from the
repo root, or `NETDP_VM_RUN`): Debian's kernel under QEMU with the host's
root file system shared read-only, so the guest runs this checkout with this
interpreter, and every NIC wired to a hub inside the QEMU process (no packet
reaches a host network). vm-run installs QEMU (from bookworm-backports for
`--igb`), the kernel and busybox itself on first use.

One VM per scenario, one process per VM (`guest.py`); the guest writes
`result.json` into a `--rwdir` share, which the host reads afterwards. The
same share carries requests from the guest for things only the host can do
while the VM runs (QMP `set_link`, i.e. pulling the virtual cable).

Timings come from vm-run's `--timing` line: boot = guest uptime when the
command started, guest = the command's own run time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deviceplugin.cni.forwarder_build import ensure_in_place

REPO = Path(__file__).resolve().parents[2]
GUEST = Path(__file__).resolve().parent / "guest.py"
DEFAULT_VM_RUN = REPO.parent / "shared" / "lab" / "vm-run.sh"
DEFAULT_KUBELET_LAB = REPO.parent / "shared" / "lab" / "kubelet"
# What the real-kubelet scenario takes from the kubelet lab (build-kubelet.sh,
# images.sh), and the Debian packages build-kubelet.sh installs for it.
REALNODE_OUTPUTS = ("bin/kubelet", "bin/pause", "images/pause.tar", "images/busybox.tar")
REALNODE_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc")
HOST_LOCAL = Path("/usr/lib/cni/host-local")
# vm-run's exit codes for its own failures (else the command's code comes back).
VM_EXIT_MEANING = {124: "the VM hit its timeout", 125: "VM or harness failure"}
_TIMING = re.compile(
    r"vm-run timing: .*guest-uptime-at-command=(?P<boot>[\d.?]+)s? "
    r"command=(?P<cmd>[\d.?]+)s? total=(?P<total>[\d.]+)s"
)


def vm_run_path() -> Path:
    return Path(os.environ.get("NETDP_VM_RUN") or DEFAULT_VM_RUN)


def kubelet_lab_path() -> Path:
    """The lab's real-kubelet build scripts (`NETDP_KUBELET_LAB` overrides)."""
    return Path(os.environ.get("NETDP_KUBELET_LAB") or DEFAULT_KUBELET_LAB)


def realnode_dir() -> Path:
    """Where the kubelet lab's scripts put their results; the guest sees the same path.

    `NETDP_REALNODE` overrides it (e.g. a fresh directory to measure a cold
    build); else the scripts' own default, `${XDG_CACHE_HOME:-~/.cache}/realnode`.
    """
    explicit = os.environ.get("NETDP_REALNODE")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "realnode"


def real_python() -> str:
    """The guest's interpreter: this one, with the same packages, and no shim in between.

    A virtualenv's `bin/python` is a link to the base interpreter, and only
    started through that link does Python find the venv's `pyvenv.cfg` and
    packages: inside a venv the path stays as it is. Elsewhere it is resolved,
    since under TCG a pyenv shim would cost seconds per start.
    """
    if sys.prefix != sys.base_prefix:
        return sys.executable
    return os.path.realpath(sys.executable)


@dataclass(frozen=True, slots=True)
class VmSpec:
    """The VM a scenario needs."""

    nics: int = 3  # extra virtio NICs eth1..ethN on one shared QEMU hub
    igb: int = 0  # emulated Intel 82576 SR-IOV NICs
    qmp: bool = False  # a QMP socket for set_link from the host
    timeout_s: int = 300
    mem_mib: int = 2048  # guest RAM (its writes, tmpfs included, live there too)


def vm_command(
    spec: VmSpec, scenario: str, out: Path, qmp_socket: Path | None, python: str
) -> list[str]:
    """The vm-run argv for one scenario (pure, so the layout is testable and printable)."""
    argv = [str(vm_run_path()), "--nics", str(spec.nics), "--timeout", str(spec.timeout_s)]
    argv += ["--mem", str(spec.mem_mib)]
    if spec.igb:
        argv += ["--igb", str(spec.igb)]
    if qmp_socket is not None:
        argv += ["--qemu-opt", "-qmp", "--qemu-opt", f"unix:{qmp_socket},server=on,wait=off"]
    argv += ["--rwdir", str(out), "--timing", "--verbose"]
    return [*argv, "--", python, str(GUEST.relative_to(REPO)), scenario, "--out", str(out)]


def parse_timing(stderr: str) -> dict[str, float | None]:
    """vm-run's `--timing` line -> boot / guest / total seconds (None where unknown)."""
    found = list(_TIMING.finditer(stderr))
    if not found:
        return {"boot_s": None, "guest_s": None, "total_s": None}

    def num(text: str) -> float | None:
        return None if "?" in text else float(text)

    last = found[-1]
    return {"boot_s": num(last["boot"]), "guest_s": num(last["cmd"]), "total_s": num(last["total"])}


def qmp(path: Path, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """One QMP command on a fresh connection (greeting, capabilities, command); its return."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = sock.makefile("rw", encoding="utf-8", newline="\n")

        def answer() -> dict[str, Any]:
            while True:
                line = stream.readline()
                if not line:
                    raise ConnectionError("QMP closed the connection")
                msg = json.loads(line)
                if "return" in msg or "error" in msg:
                    return msg

        stream.readline()  # greeting
        for cmd, args in (("qmp_capabilities", None), (command, arguments)):
            request: dict[str, Any] = {"execute": cmd}
            if args:
                request["arguments"] = args
            stream.write(json.dumps(request) + "\n")
            stream.flush()
            msg = answer()
            if "error" in msg:
                raise RuntimeError(f"QMP {cmd}: {msg['error']}")
        return msg["return"]


@dataclass
class GuestRun:
    """What one VM run left behind."""

    scenario: str
    argv: list[str]
    returncode: int
    result: dict[str, Any] | None
    stdout: str
    stderr: str
    wall_s: float
    timing: dict[str, float | None]
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def facts(self) -> dict[str, Any]:
        return (self.result or {}).get("facts", {})

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.result is not None and not self.result["error"]

    def explain(self, lines: int = 40) -> str:
        """Everything needed to see why a scenario failed, for an assertion message."""

        def tail(text: str) -> str:
            return "\n".join(text.splitlines()[-lines:])

        meaning = VM_EXIT_MEANING.get(self.returncode, "the guest driver's exit code")
        parts = [
            f"scenario {self.scenario}: vm-run exit {self.returncode} ({meaning}) "
            f"after {self.wall_s:.1f} s",
            "$ " + " ".join(self.argv),
        ]
        if self.result is None:
            parts.append("no result.json from the guest")
        else:
            if self.result.get("error"):
                parts.append("guest error:\n" + self.result["error"])
            parts.append("steps: " + json.dumps(self.result.get("steps")))
            parts.append("facts: " + json.dumps(self.facts, sort_keys=True)[:4000])
        for name, text in sorted(self.logs.items()):
            parts.append(f"--- {name} (tail)\n{tail(text)}")
        parts.append("--- guest stdout (tail)\n" + tail(self.stdout))
        parts.append("--- vm-run stderr: guest stderr and console (tail)\n" + tail(self.stderr))
        return "\n".join(parts)


def require(run: GuestRun, *keys: str) -> list[Any]:
    """The facts a test checks; fails with the whole story when the guest did not get there."""
    missing = [k for k in keys if k not in run.facts]
    assert not missing, f"guest did not record {missing}\n{run.explain()}"
    return [run.facts[k] for k in keys]


def serve_requests(out: Path, qmp_socket: Path | None, handled: set[str]) -> None:
    """Answer the guest's pending requests (see guest.Recorder.ask_host)."""
    for request_file in sorted(out.glob("request-*.json")):
        if request_file.name in handled:
            continue
        handled.add(request_file.name)
        request = json.loads(request_file.read_text())
        reply: dict[str, Any] = {"error": None}
        try:
            if "qmp" not in request or qmp_socket is None:
                raise ValueError(f"cannot serve {request} (no QMP socket)")
            reply["return"] = qmp(qmp_socket, request["qmp"], request.get("arguments"))
        except (OSError, ValueError, RuntimeError) as exc:
            reply["error"] = repr(exc)
        name = request_file.name.replace("request-", "reply-")
        tmp = out / f".{name}"
        tmp.write_text(json.dumps(reply))
        tmp.rename(out / name)


# QEMU 10's multi-threaded TCG now and then aborts on an internal assertion
# (`iotlb_to_section: Assertion ... failed`) while the guest kernel is still
# enumerating PCI, seconds before our command would start. That is QEMU's own
# crash, never the scenario's doing, so such a run is repeated once.
QEMU_ABORTED = "the VM stopped without a result (qemu exit 134)"


def run_scenario(scenario: str, spec: VmSpec, python: str | None = None) -> GuestRun:
    """Boot a VM, run `guest.py scenario` in it; once more if QEMU itself aborted."""
    run = _run_once(scenario, spec, python)
    if run.returncode == 125 and run.result is None and QEMU_ABORTED in run.stderr:
        print(f"\ne2e {scenario}: QEMU aborted before the scenario ran; booting again")
        again = _run_once(scenario, spec, python)
        again.logs["first attempt: vm-run stderr"] = run.stderr
        return again
    return run


def _run_once(scenario: str, spec: VmSpec, python: str | None) -> GuestRun:
    """Boot a VM, run `guest.py scenario` in it, collect its result and logs."""
    work = Path(tempfile.mkdtemp(prefix="ndp-e2e-", dir="/tmp"))
    out = work / "out"
    out.mkdir()
    qmp_socket = work / "qmp.sock" if spec.qmp else None
    argv = vm_command(spec, scenario, out, qmp_socket, python or real_python())
    started = time.monotonic()
    try:
        with open(work / "stdout", "w+") as so, open(work / "stderr", "w+") as se:
            proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=so, stderr=se)
            handled: set[str] = set()
            # vm-run's own --timeout should have fired long before; SIGTERM lets
            # its trap stop QEMU, SIGKILL is for a vm-run that hangs even so.
            deadline = started + spec.timeout_s + 60
            while proc.poll() is None:
                serve_requests(out, qmp_socket, handled)
                overdue = time.monotonic() - deadline
                if overdue > 15:
                    proc.kill()
                elif overdue > 0:
                    proc.terminate()
                time.sleep(0.05)
            so.seek(0)
            se.seek(0)
            stdout, stderr = so.read(), se.read()
        result_file = out / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        logs = {p.name: p.read_text(errors="replace") for p in sorted(out.glob("*.log"))}
        if (out / "dmesg.txt").exists():
            logs["dmesg"] = (out / "dmesg.txt").read_text(errors="replace")
        return GuestRun(
            scenario=scenario,
            argv=argv,
            returncode=proc.returncode,
            result=result,
            stdout=stdout,
            stderr=stderr,
            wall_s=time.monotonic() - started,
            timing=parse_timing(stderr),
            logs=logs,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare(python: str | None = None) -> float:
    """Install what the VMs need and precompile the sources; returns the seconds it took.

    vm-run's `--setup` installs QEMU with igb, the kernel and busybox once per
    machine; Debian's CNI plugins give the guest its host-local IPAM. Bytecode
    is compiled here because compiling inside the guest runs ~15x slower (and
    the guest's own writes are thrown away with it).
    """
    started = time.monotonic()
    vm_run = vm_run_path()
    if not vm_run.exists():
        raise FileNotFoundError(
            f"{vm_run} not found: e2e needs the lab's vm-run.sh (set NETDP_VM_RUN, "
            "or NETDP_E2E=0 to leave the e2e stage out)"
        )
    if not HOST_LOCAL.exists():  # the guest's IPAM, from the host's file system
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
             "containernetworking-plugins"],
            check=True, capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )  # fmt: skip
    setup = subprocess.run(
        [str(vm_run), "--igb", "1", "--setup"], capture_output=True, text=True, cwd=REPO
    )
    if setup.returncode != 0:
        raise RuntimeError(f"vm-run --setup failed:\n{setup.stdout}\n{setup.stderr}")
    # The guest sees this checkout read-only: its ehost-device binary is built here.
    ensure_in_place()
    subprocess.run(
        [python or real_python(), "-m", "compileall", "-q", "deviceplugin", "tests"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def prepare_realnode() -> float:
    """Build the real kubelet, pause and the two images unless already there; seconds taken.

    The lab's scripts are idempotent, but even warm `build-kubelet.sh` relinks
    the kubelet (seconds of both cores), so they run only when an output or a
    Debian tool they install is missing: on a cold machine ~3.5 min (Go build),
    plus the Debian packages and the source package download.
    """
    started = time.monotonic()
    out = realnode_dir()
    lab = kubelet_lab_path()

    def absent() -> list[str]:
        return [f for f in REALNODE_OUTPUTS if not (out / f).exists()]

    tools_missing = any(shutil.which(t) is None for t in REALNODE_TOOLS)
    steps = []
    if tools_missing or any(f.startswith("bin/") for f in absent()):
        steps.append("build-kubelet.sh")  # the binaries and the Debian tools
    if steps or absent():
        steps.append("images.sh")  # images of this very pause binary
    for script in steps:
        path = lab / script
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: the real-kubelet scenario needs the lab's kubelet scripts "
                "(set NETDP_KUBELET_LAB, or NETDP_E2E=0 to leave the e2e stage out)"
            )
        done = subprocess.run([str(path), str(out)], capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise RuntimeError(f"{path} {out} failed:\n{done.stdout}\n{done.stderr}")
    if absent():
        raise RuntimeError(f"the kubelet lab's scripts left no {absent()} in {out}")
    return time.monotonic() - started


def summary_rows(runs: Sequence[GuestRun]) -> list[str]:
    """One line per scenario for the terminal summary."""
    rows = [f"{'scenario':10} {'boot s':>7} {'guest s':>8} {'VM total s':>10} {'wall s':>7}  ok"]
    for r in runs:
        t = r.timing

        def fmt(v: float | None) -> str:
            return "?" if v is None else f"{v:.1f}"

        rows.append(
            f"{r.scenario:10} {fmt(t['boot_s']):>7} {fmt(t['guest_s']):>8} "
            f"{fmt(t['total_s']):>10} {r.wall_s:>7.1f}  {'yes' if r.ok else 'NO'}"
        )
    return rows
