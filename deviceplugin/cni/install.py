"""Installing the ehost-device forwarder into a node's CNI bin directory.

The file comes from this netdp installation (`forwarder_build.BINARY`, built
when netdp was installed; the container image ships it) and is copied
whole: written to a temporary file in the target directory, then renamed
over the old one. A runtime may be executing the old file right now, and
writing into it would fail (ETXTBSY) or leave a half-written plugin.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deviceplugin.cni.forwarder_build import BINARY, INSTALL_HINT

PLUGIN_NAME = "ehost-device"


class NoForwarder(Exception):
    """This netdp installation has no ehost-device binary."""


@dataclass(frozen=True, slots=True)
class Installed:
    path: Path
    size: int
    sha256: str

    def describe(self) -> str:
        return f"installed {self.path} ({self.size} bytes, sha256 {self.sha256})"


def packaged_forwarder() -> Path:
    """The binary built into this installation; `NoForwarder` says how to get one."""
    if not os.access(BINARY, os.X_OK) or not BINARY.is_file():
        raise NoForwarder(
            f"this netdp installation has no ehost-device binary ({BINARY} is missing): "
            f"it is built when netdp is installed on a machine with {INSTALL_HINT}; "
            "the netdp container image ships it"
        )
    return BINARY


def install_forwarder(dest: Path) -> Installed:
    """Copy the forwarder to `dest/ehost-device` atomically; what was installed."""
    source = packaged_forwarder()
    data = source.read_bytes()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / PLUGIN_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{PLUGIN_NAME}.", dir=dest)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            os.fchmod(out.fileno(), 0o755)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Installed(target, len(data), hashlib.sha256(data).hexdigest())
