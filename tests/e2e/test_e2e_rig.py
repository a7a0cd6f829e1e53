"""The rig's own logic, without a VM: argv layout, timing parse, QMP and the request channel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmrig import (
    GUEST,
    REPO,
    VmSpec,
    parse_timing,
    qmp,
    real_python,
    serve_requests,
    vm_command,
)

from deviceplugin.sim.fakesysfs import tmpfs_tempdir


def test_vm_command_layout() -> None:
    argv = vm_command(VmSpec(nics=2, igb=1), "sriov", Path("/tmp/o"), Path("/tmp/q.sock"), "/py")
    assert argv[argv.index("--nics") + 1] == "2"
    assert argv[argv.index("--igb") + 1] == "1"
    assert "unix:/tmp/q.sock,server=on,wait=off" in argv
    assert argv[argv.index("--rwdir") + 1] == "/tmp/o"
    assert argv[argv.index("--") + 1 :] == [
        "/py", str(GUEST.relative_to(REPO)), "sriov", "--out", "/tmp/o"
    ]  # fmt: skip
    assert "-qmp" not in vm_command(VmSpec(), "virtio", Path("/o"), None, "/py")


def test_parse_timing() -> None:
    line = (
        "noise\nvm-run timing: accel=tcg prep=0.05s guest-uptime-at-command=2.78s "
        "command=9.47s total=12.78s\n"
    )
    assert parse_timing(line) == {"boot_s": 2.78, "guest_s": 9.47, "total_s": 12.78}
    unknown = "vm-run timing: accel=tcg prep=0.1s guest-uptime-at-command=?s command=? total=3.00s"
    assert parse_timing(unknown) == {"boot_s": None, "guest_s": None, "total_s": 3.0}
    assert parse_timing("") == {"boot_s": None, "guest_s": None, "total_s": None}


@pytest.fixture
def fake_qmp() -> Iterator[tuple[Path, list[dict]]]:
    """A QMP server that accepts any command and records it (greeting, events included)."""
    with tmpfs_tempdir("qmp-") as tmp:
        path = tmp / "qmp.sock"
        seen: list[dict] = []
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen()

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn, conn.makefile("rw") as f:
                    f.write(json.dumps({"QMP": {"version": {}, "capabilities": []}}) + "\n")
                    f.flush()
                    for line in f:
                        msg = json.loads(line)
                        seen.append(msg)
                        if msg["execute"] == "set_link":
                            f.write(json.dumps({"event": "NIC_RX_FILTER_CHANGED"}) + "\n")
                        if msg["execute"] == "nonsense":
                            f.write(json.dumps({"error": {"class": "CommandNotFound"}}) + "\n")
                        else:
                            f.write(json.dumps({"return": {}}) + "\n")
                        f.flush()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield path, seen
        finally:
            server.shutdown(socket.SHUT_RDWR)
            server.close()
            thread.join(2)


def test_qmp_negotiates_then_runs_the_command(fake_qmp: tuple[Path, list[dict]]) -> None:
    path, seen = fake_qmp
    assert qmp(path, "set_link", {"name": "vmnet1", "up": False}) == {}
    assert seen == [
        {"execute": "qmp_capabilities"},
        {"execute": "set_link", "arguments": {"name": "vmnet1", "up": False}},
    ]
    with pytest.raises(RuntimeError, match="CommandNotFound"):
        qmp(path, "nonsense")


def test_guest_requests_are_answered_once(fake_qmp: tuple[Path, list[dict]]) -> None:
    path, seen = fake_qmp
    with tmpfs_tempdir("req-") as out:
        (out / "request-1.json").write_text(
            json.dumps({"qmp": "set_link", "arguments": {"name": "vmnet1", "up": True}})
        )
        (out / "request-2.json").write_text(json.dumps({"shell": "rm -rf /"}))
        handled: set[str] = set()
        serve_requests(out, path, handled)
        serve_requests(out, path, handled)
        assert json.loads((out / "reply-1.json").read_text()) == {"error": None, "return": {}}
        assert "cannot serve" in json.loads((out / "reply-2.json").read_text())["error"]
        assert [m["execute"] for m in seen] == ["qmp_capabilities", "set_link"]


def test_guest_interpreter_sees_this_interpreters_packages(tmp_path: Path) -> None:
    """Run from a virtualenv, the guest must get the venv's interpreter (its packages),
    not the base interpreter behind the venv's link."""
    venv_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv_dir)], check=True)
    venv_python = venv_dir / "bin" / "python"
    ask = f"import sys; sys.path.insert(0, {str(GUEST.parent)!r}); import vmrig; "
    chosen = subprocess.run(
        [str(venv_python), "-c", ask + "print(vmrig.real_python())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip

    def prefix_of(python: str) -> str:
        return subprocess.run(
            [python, "-c", "import sys; print(sys.prefix)"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    assert prefix_of(chosen) == str(venv_dir)
    assert prefix_of(real_python()) == sys.prefix  # and from here, this one's
    if sys.prefix == sys.base_prefix:  # no venv: resolved, no shim or link in the way
        assert real_python() == os.path.realpath(real_python())


def fake_vm_run(tmp_path: Path, answers: list[str]) -> Path:
    """A vm-run stand-in that plays `answers` in turn: `abort` is QEMU aborting during
    boot (vm-run's exit 125 and its message), `fail` a guest command exiting 3."""
    script = tmp_path / "vm-run.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'n=$(cat "{tmp_path}/count" 2>/dev/null || echo 0); echo $((n+1)) > "{tmp_path}/count"\n'
        f'set -- {" ".join(answers)}; shift "$n"\n'
        'case "$1" in\n'
        "  abort) echo 'vm-run: the VM stopped without a result (qemu exit 134)' >&2; exit 125;;\n"
        "  fail) exit 3;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    ("answers", "code", "boots"),
    [(["abort", "fail"], 3, 2), (["abort", "abort", "fail"], 125, 2), (["fail", "fail"], 3, 1)],
)
def test_a_qemu_abort_is_booted_again_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: list[str], code: int, boots: int
) -> None:
    """QEMU's own crash gets one more boot; a scenario's failure never does."""
    from vmrig import run_scenario

    monkeypatch.setenv("NETDP_VM_RUN", str(fake_vm_run(tmp_path, answers)))
    run = run_scenario("virtio", VmSpec(timeout_s=30), python=sys.executable)
    assert run.returncode == code
    assert int((tmp_path / "count").read_text()) == boots
    assert ("first attempt: vm-run stderr" in run.logs) is (boots == 2)
