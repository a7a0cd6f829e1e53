"""Where the CNI side works: sysfs, its per-device lock files, the kubelet's PodResources.

Kept apart from the executor so that `netdp run` can check the CNI socket's
directory, which the lock directory shares by default, before it loads any
CNI code (`listen.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deviceplugin.api.constants import POD_RESOURCES_SOCKET

DEFAULT_LOCK_DIR = Path("/run/netdp/cni-locks")


@dataclass(frozen=True, slots=True)
class Settings:
    sysfs_root: Path = Path("/sys")
    lock_dir: Path = DEFAULT_LOCK_DIR
    pod_resources_socket: Path = POD_RESOURCES_SOCKET


def settings_from_env(environ: Mapping[str, str]) -> Settings:
    """What `netdp run` reads from the environment only: the lock directory and the
    kubelet's PodResources socket (tests point both elsewhere)."""
    return Settings(
        lock_dir=Path(environ.get("NETDP_CNI_LOCK_DIR") or DEFAULT_LOCK_DIR),
        pod_resources_socket=Path(
            environ.get("NETDP_POD_RESOURCES_SOCKET") or POD_RESOURCES_SOCKET
        ),
    )
