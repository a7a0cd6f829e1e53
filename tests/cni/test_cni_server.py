"""CniServer embedded in an asyncio loop, as `netdp run` embeds it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from deviceplugin.cni import shim
from deviceplugin.cni.server import CniServer
from deviceplugin.observer import DaemonObserver


def test_embedded_server_answers_and_rejects_garbage(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "cni.sock"

    async def scenario() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        server = CniServer(sock, sysfs_root=tmp_path, lock_dir=tmp_path / "locks")
        await server.start()
        try:
            request = shim.encode_request({"CNI_COMMAND": "VERSION"}, b"{}")
            good = await asyncio.to_thread(shim.call_daemon, str(sock), request)
            bad = await asyncio.to_thread(shim.call_daemon, str(sock), b"GET / HTTP/1.0\r\n")
        finally:
            await server.stop()
        return good, bad

    (code, out), (bad_code, bad_out) = asyncio.run(scenario())
    assert code == 0 and json.loads(out)["cniVersion"] == "1.1.0"
    assert bad_code == 1 and json.loads(bad_out)["code"] == 6
    assert not sock.exists()


def test_start_replaces_stale_socket(tmp_path: Path) -> None:
    sock = tmp_path / "cni.sock"
    sock.write_text("left over by a dead daemon")

    async def scenario() -> int:
        server = CniServer(sock, sysfs_root=tmp_path, lock_dir=tmp_path / "locks")
        await server.start()
        try:
            request = shim.encode_request({"CNI_COMMAND": "VERSION"}, b"{}")
            return (await asyncio.to_thread(shim.call_daemon, str(sock), request))[0]
        finally:
            await server.stop()

    assert asyncio.run(scenario()) == 0


class Calls(DaemonObserver):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []

    def cni_call(self, command: str, result: str, seconds: float) -> None:
        self.seen.append((command, result, seconds))


def test_every_answered_call_is_reported_to_the_observer(tmp_path: Path) -> None:
    sock = tmp_path / "cni.sock"
    calls = Calls()

    async def scenario() -> None:
        server = CniServer(sock, sysfs_root=tmp_path, lock_dir=tmp_path / "locks", observer=calls)
        await server.start()
        try:
            for env, stdin in (
                ({"CNI_COMMAND": "VERSION"}, b"{}"),
                # No device named: the executor answers code 7, the runtime sees it.
                (
                    {
                        "CNI_COMMAND": "ADD",
                        "CNI_CONTAINERID": "c1",
                        "CNI_NETNS": "/run/netns/none",
                        "CNI_IFNAME": "net1",
                        "CNI_PATH": "/opt/cni/bin",
                    },
                    b'{"cniVersion": "1.0.0", "name": "n", "type": "ehost-device"}',
                ),
            ):
                request = shim.encode_request(env, stdin)
                await asyncio.to_thread(shim.call_daemon, str(sock), request)
            await asyncio.to_thread(shim.call_daemon, str(sock), b"garbage")
        finally:
            await server.stop()

    asyncio.run(scenario())
    assert [(c, r) for c, r, _ in calls.seen] == [("VERSION", "ok"), ("ADD", "7"), ("other", "6")]
    assert all(0 <= s < 5 for _, _, s in calls.seen)
