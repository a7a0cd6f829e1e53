"""A node of fakes for the no-root CNI tests: the executor wired to `fakenet`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fakenet import FakeIpam, FakeKernel, FakeLink, FakeNode

from deviceplugin.cni.executor import Executor
from deviceplugin.cni.settings import Settings

POD = "/run/netns/pod"


@dataclass
class World:
    tmp: Path
    kernel: FakeKernel = field(default_factory=FakeKernel)
    allocated: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    lookups_fail: bool = False

    def __post_init__(self) -> None:
        self.node = FakeNode(self.kernel)
        self.ipam = FakeIpam(self.kernel.calls)
        self.kernel.add_pod(POD)
        self.lock_dir = self.tmp / "locks"
        self.executor = Executor(
            Settings(sysfs_root=self.tmp / "no-sys", lock_dir=self.lock_dir),
            self._pod_devices,
            namespaces=self.kernel,
            devices=self.node,
            ipam=self.ipam,
        )

    def _pod_devices(self, socket: Path, namespace: str, name: str, resource: str) -> list[str]:
        if self.lookups_fail:
            raise ConnectionRefusedError(f"{socket}: connection refused")
        return self.allocated.get((namespace, name, resource), [])

    def nic(self, slot: int, **kw: Any) -> tuple[str, FakeLink]:
        """A virtio NIC in the host namespace: (PCI address, its link)."""
        pci = f"0000:00:{slot:02x}.0"
        self.node.pcis.add(pci)
        return pci, self.kernel.nic(pci, f"ens{slot}", **kw)

    def conf(self, version: str = "1.0.0", ipam: bool = True, **extra: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": version, "name": "net", "type": "ehost-device"}
        if ipam:
            doc["ipam"] = {"type": "host-local"}
        return doc | extra

    def run(
        self,
        command: str,
        conf: dict[str, Any] | bytes,
        *,
        netns: str | None = POD,
        ifname: str = "net1",
        cid: str = "c1",
        args: str = "",
    ) -> tuple[int, Any]:
        """(exit code, parsed answer or None), after checking every namespace was closed."""
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_IFNAME": ifname,
            "CNI_PATH": "/opt/cni/bin",
        }
        if netns:
            env["CNI_NETNS"] = netns
        if args:
            env["CNI_ARGS"] = args
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        outcome = self.executor.run(env, stdin)
        assert self.kernel.open == 0, "a namespace was left open"
        return outcome.exit_code, json.loads(outcome.stdout) if outcome.stdout else None

    def locks(self) -> list[str]:
        return sorted(p.name for p in self.lock_dir.iterdir()) if self.lock_dir.exists() else []
