"""`ports.DeviceResolver` on sysfs: the device records the daemon's scanner reads too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deviceplugin import sysfs
from deviceplugin.model import Device


@dataclass(frozen=True, slots=True)
class SysfsDevices:
    sysfs_root: Path

    def device(self, pci_address: str) -> Device | None:
        return sysfs.read_device(self.sysfs_root, pci_address)

    def pci_of_netdev(self, name: str) -> str | None:
        return sysfs.netdev_pci_address(self.sysfs_root, name)
