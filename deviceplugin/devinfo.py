"""Device-info files of the Network Plumbing WG device-info spec.

Multus copies the device plugin's file for the allocated device next to the
CNI call and publishes it in the pod's `network-status` annotation, which is
how a workload learns which PCI function backs its `net1`. The file name is
fixed by that convention: `<resource with / as ->-<device id>-device.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from deviceplugin.model import Device

DEFAULT_DEVINFO_DIR = Path("/var/run/k8s.cni.cncf.io/devinfo/dp")
SPEC_VERSION = "1.1.0"


def devinfo_filename(resource_name: str, device_id: str) -> str:
    return f"{resource_name.replace('/', '-')}-{device_id}-device.json"


def devinfo_document(device: Device) -> dict[str, Any]:
    """The spec's `pci` document for one device; the PF address only for VFs."""
    pci: dict[str, str] = {"pci-address": device.pci_address}
    if device.pf_address:
        pci["pf-pci-address"] = device.pf_address
    return {"type": "pci", "version": SPEC_VERSION, "pci": pci}


def write_devinfo(directory: Path, resource_name: str, device: Device) -> Path:
    """The device plugin's file for one allocated device, under the conventional name."""
    path = directory / devinfo_filename(resource_name, device.pci_address)
    write_devinfo_file(path, device)
    return path


def write_devinfo_file(path: Path, device: Device) -> None:
    """One device's document at `path` (the plugin's file, or the one Multus asks the CNI
    for), written atomically: Multus may read it at any moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(devinfo_document(device), indent=2) + "\n")
    os.replace(tmp, path)


def remove_devinfo(paths: list[Path]) -> None:
    """Remove files written earlier; already-gone files are fine."""
    for path in paths:
        path.unlink(missing_ok=True)


class PoolDevinfo:
    """One pool's device-info files: each written on its device's first Allocate, and
    again only if its document changed or the file went away.

    A document depends on nothing that changes while the device exists (its
    address and its PF's), so rewriting it on every Allocate was five syscalls
    of pure repetition; one `stat` per Allocate still notices a deleted file.
    """

    def __init__(self, directory: Path, resource_name: str) -> None:
        self._directory = str(directory)
        self._resource_name = resource_name
        self._written: dict[str, dict[str, Any]] = {}  # path -> document

    def ensure(self, device: Device) -> None:
        """The device's file, as `write_devinfo` writes it, unless it is there already."""
        path = os.path.join(
            self._directory, devinfo_filename(self._resource_name, device.pci_address)
        )
        document = devinfo_document(device)
        if self._written.get(path) == document and os.path.exists(path):
            return
        write_devinfo_file(Path(path), device)
        self._written[path] = document

    @property
    def paths(self) -> list[Path]:
        """Every file written so far, in name order."""
        return [Path(p) for p in sorted(self._written)]

    def remove_all(self) -> None:
        remove_devinfo(self.paths)
        self._written.clear()
