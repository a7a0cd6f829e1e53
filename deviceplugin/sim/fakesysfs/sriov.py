"""SR-IOV in a fake sysfs: what a PF records about its VFs, and where the kernel puts them.

The PF's `sriov_*` files, and the VF addresses the kernel derives from them:
VF i sits at the PF's routing id + `sriov_offset` + i * `sriov_stride` (the
SR-IOV capability's First VF Offset and VF Stride), on the PF's bus or the ones
after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def routing_id(pci: str) -> tuple[str, int]:
    """`0000:05:00.1` -> (`0000`, bus << 8 | device << 3 | function)."""
    domain, bus, devfn = pci.split(":")
    dev, fn = devfn.split(".")
    return domain, (int(bus, 16) << 8) | (int(dev, 16) << 3) | int(fn)


def pci_of(domain: str, rid: int) -> str:
    if rid > 0xFFFF:
        raise ValueError("VF routing id beyond bus ff")
    return f"{domain}:{rid >> 8:02x}:{(rid >> 3) & 0x1F:02x}.{rid & 7}"


@dataclass(slots=True)
class Sriov:
    """A PF's SR-IOV capability and the VFs it has now."""

    total: int
    offset: int
    stride: int
    vf_device: str
    vf_driver: str | None  # what new VFs bind to (None: left unbound)
    num: int = 0  # what sriov_numvfs says
    vfs: dict[int, str] = field(default_factory=dict)  # virtfn index -> VF address

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ValueError("a PF needs total_vfs >= 1")
        if self.offset < 1 or self.stride < 1:
            raise ValueError("offset and stride must be >= 1")

    def files(self) -> dict[str, int | str]:
        """The PF's `sriov_*` attribute files and their values before any VF exists."""
        return {
            "sriov_totalvfs": self.total,
            "sriov_numvfs": 0,
            "sriov_offset": self.offset,
            "sriov_stride": self.stride,
            "sriov_vf_device": self.vf_device,
        }

    def check_num_vfs(self, pf: str, n: int) -> None:
        """Refuse what the kernel refuses for `echo n > sriov_numvfs`."""
        if not 0 <= n <= self.total:
            raise ValueError(f"{pf}: numvfs {n} outside 0..{self.total}")
        if n and self.num and n != self.num:
            raise ValueError(f"{pf}: device busy, set numvfs to 0 first")

    def vf_addresses(self, pf: str, n: int) -> list[str]:
        """The addresses of VFs 0..n-1 of PF `pf`."""
        domain, rid = routing_id(pf)
        return [pci_of(domain, rid + self.offset + i * self.stride) for i in range(n)]
