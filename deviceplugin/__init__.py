"""netdp: a Kubernetes device plugin and CNI plugin for PCI network devices."""

__version__ = "0.1.0"
