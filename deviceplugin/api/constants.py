"""Values the kubelet hard-codes around the Device Plugin and PodResources APIs.

They are part of the contract as much as the .proto files: a plugin that
registers another version string, or a health value with different case, is
refused or misread by the kubelet.
"""

from pathlib import Path

# Device Plugin API version sent in RegisterRequest.version.
VERSION = "v1beta1"
# Versions the kubelet's registration server accepts.
SUPPORTED_VERSIONS = ("v1beta1",)

# Device.health values in ListAndWatch.
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

# Where the kubelet serves Registration and expects plugin sockets.
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
# File name of the kubelet's registration socket inside the device plugin dir.
KUBELET_SOCKET_NAME = "kubelet.sock"
KUBELET_SOCKET = DEVICE_PLUGIN_DIR / KUBELET_SOCKET_NAME

# Where the kubelet serves the PodResources API.
POD_RESOURCES_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
