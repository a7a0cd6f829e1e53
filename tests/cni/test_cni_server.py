"""CniServer embedded in an asyncio loop, as `netdp run` embeds it, driven over netdp-cni/2."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from helpers import cni_socket_call

from deviceplugin.cni import listen as listen_module
from deviceplugin.cni import wire
from deviceplugin.cni.listen import secure_socket_dir
from deviceplugin.cni.server import CniServer
from deviceplugin.cni.types import version_result
from deviceplugin.observer import DaemonObserver


def serve(tmp_path: Path, sock: Path, *requests: bytes) -> list[bytes]:
    """Start a server on `sock`, send each request on its own connection, stop it."""

    async def scenario() -> list[bytes]:
        server = CniServer(sock, sysfs_root=tmp_path, lock_dir=tmp_path / "locks")
        await server.start()
        try:
            return [await asyncio.to_thread(cni_socket_call, sock, r) for r in requests]
        finally:
            await server.stop()

    return asyncio.run(scenario())


def test_answers_a_request_and_refuses_garbage(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "cni.sock"
    stdin = json.dumps({"cniVersion": "1.1.0", "name": "n"}).encode()
    status = {"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin"}
    good, status, bad, cut = serve(
        tmp_path,
        sock,
        wire.encode_request({"CNI_COMMAND": "VERSION"}, b"{}"),
        wire.encode_request(status, stdin),
        b"GET / HTTP/1.0\r\n\r\n",
        wire.encode_request(status, stdin)[:-3],
    )
    assert wire.decode_response(good) == (0, json.dumps(version_result()).encode())
    assert wire.decode_response(status) == (0, b"")
    code, out = wire.decode_response(bad)
    assert code == 1 and json.loads(out)["code"] == 6
    assert cut == b""  # the client hung up mid-request: nobody to answer
    assert not sock.exists()


def test_start_replaces_stale_socket(tmp_path: Path) -> None:
    sock = tmp_path / "cni.sock"
    sock.write_text("left over by a dead daemon")
    request = wire.encode_request({"CNI_COMMAND": "VERSION"}, b"{}")
    assert wire.decode_response(serve(tmp_path, sock, request)[0])[0] == 0


def test_socket_is_root_only_in_a_root_only_directory(tmp_path: Path) -> None:
    """0600 on the socket, 0700 on its directory: the directory was created
    that way, or tightened (a hostPath volume arrives as 0755)."""
    for existing in (False, True):
        sock = tmp_path / f"run{existing}" / "netdp" / "cni.sock"
        if existing:
            sock.parent.mkdir(parents=True, mode=0o755)
            os.chmod(sock.parent, 0o755)
        modes = []

        async def scenario(sock: Path = sock, modes: list[int] = modes) -> None:
            server = CniServer(sock, sysfs_root=tmp_path, lock_dir=tmp_path / "locks")
            await server.start()
            try:
                modes.append(stat.S_IMODE(sock.stat().st_mode))
                modes.append(stat.S_IMODE(sock.parent.stat().st_mode))
                assert stat.S_ISSOCK(sock.stat().st_mode)
                assert sock.parent.stat().st_uid == os.geteuid()
            finally:
                await server.stop()

        asyncio.run(scenario())
        assert modes == [0o600, 0o700], existing


def test_shared_or_foreign_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never tightened: a directory others use (sticky like /tmp, or holding other
    files like /run), or one that is not ours; a root-only one is used as it is."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(PermissionError, match="sticky bit"):
        secure_socket_dir(shared, {"cni.sock"})
    run = tmp_path / "run"
    (run / "lock").mkdir(parents=True)
    os.chmod(run, 0o755)
    with pytest.raises(PermissionError, match=r"holds \['lock'\]"):
        secure_socket_dir(run, {"cni.sock", "cni-locks"})
    assert [stat.S_IMODE(d.stat().st_mode) for d in (shared, run)] == [0o1777, 0o755]

    os.chmod(run, 0o700)
    secure_socket_dir(run, {"cni.sock"})  # closed to others already: whatever it holds

    ours = tmp_path / "netdp"
    (ours / "cni-locks").mkdir(parents=True)
    os.chmod(ours, 0o755)
    secure_socket_dir(ours, {"cni.sock", "cni-locks"})
    assert stat.S_IMODE(ours.stat().st_mode) == 0o700

    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o755)
    monkeypatch.setattr(listen_module.os, "geteuid", lambda: os.getuid() + 4242)
    with pytest.raises(PermissionError, match="belongs to uid"):
        secure_socket_dir(foreign, {"cni.sock"})


class Calls(DaemonObserver):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []

    def cni_call(self, command: str, result: str, seconds: float) -> None:
        self.seen.append((command, result, seconds))


def test_every_answered_call_is_reported_to_the_observer(tmp_path: Path) -> None:
    sock = tmp_path / "cni.sock"
    calls = Calls()
    add_env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/run/netns/none",
        "CNI_IFNAME": "net1",
        "CNI_PATH": "/opt/cni/bin",
    }
    requests = [
        wire.encode_request({"CNI_COMMAND": "VERSION"}, b"{}"),
        # No device named: the executor answers code 7, the runtime sees it.
        wire.encode_request(
            add_env, b'{"cniVersion": "1.0.0", "name": "n", "type": "ehost-device"}'
        ),
        b"garbage\n",
    ]

    async def scenario() -> None:
        server = CniServer(sock, sysfs_root=tmp_path, lock_dir=tmp_path / "locks", observer=calls)
        await server.start()
        try:
            for request in requests:
                await asyncio.to_thread(cni_socket_call, sock, request)
        finally:
            await server.stop()

    asyncio.run(scenario())
    assert [(c, r) for c, r, _ in calls.seen] == [("VERSION", "ok"), ("ADD", "7"), ("other", "6")]
    assert all(0 <= s < 5 for _, _, s in calls.seen)
