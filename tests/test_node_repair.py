"""The daemon's node repair hook, in process: run before every scan, heard by the observer.

The repair itself (which NICs, under which lock) is `cni/repair.py`'s, tested on
in-memory ports in tests/cni/test_repair_rules.py and on real namespaces in
tests/cni/test_ehost_device.py; here it is a stand-in that says what it did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from deviceplugin.config import default_config
from deviceplugin.daemon import Daemon, Settings
from deviceplugin.observer import DaemonObserver
from deviceplugin.sim.fakesysfs import FakeSysfs


class Heard(DaemonObserver):
    def __init__(self) -> None:
        self.repaired: list[tuple[str, str]] = []
        self.discoveries: list[int] = []

    def nic_repaired(self, device: str, name: str) -> None:
        self.repaired.append((device, name))

    def discovery_done(self, trigger: str, seconds: float, devices: int) -> None:
        self.discoveries.append(devices)


def test_repair_runs_before_each_scan_and_is_reported(node) -> None:
    fs = FakeSysfs(node.sysfs)
    heard = Heard()
    rounds: list[int] = []

    def repair() -> Sequence[tuple[str, str]]:
        """Round 1 puts a NIC "back" (here: makes it appear), round 2 fails, round 3 idles."""
        rounds.append(len(rounds) + 1)
        if len(rounds) == 1:
            fs.add_virtio_nic("0000:05:00.0", "ens5")
            return [("0000:05:00.0", "ens5")]
        if len(rounds) == 2:
            raise OSError("netlink went away")
        return []

    async def main() -> None:
        daemon = Daemon(
            default_config(),
            Settings(node.plugins, node.sysfs, None),
            routes=frozenset,
            observer=heard,
            repair=repair,
        )
        try:
            await daemon.refresh()  # start
            assert heard.repaired == [("0000:05:00.0", "ens5")]
            assert heard.discoveries == [1]  # the scan saw the NIC the repair put back
            await daemon.refresh("periodic")  # a failing repair does not stop the rescan
            await daemon.refresh("uevent")
        finally:
            await daemon.shutdown()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert rounds == [1, 2, 3]
    assert heard.repaired == [("0000:05:00.0", "ens5")]
    assert heard.discoveries == [1, 1, 1]
