"""Whether a device can be handed to a pod right now, as the kubelet should see it.

Pure: a device record in, a health value out. A device that has lost its
driver cannot be used by anyone, so it stays advertised (capacity is not
silently lost) but is marked Unhealthy until a driver is bound again.
"""

from __future__ import annotations

from deviceplugin.model import Device, Health


def device_health(device: Device) -> Health:
    if device.driver is None:
        return Health.UNHEALTHY
    return Health.HEALTHY
