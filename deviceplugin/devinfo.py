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
