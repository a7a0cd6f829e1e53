"""The CNI socket's file: in a directory only its owner may enter, mode 0600.

Whoever can connect can move the node's NICs, so the socket is root's
alone. `netdp run` opens it before it registers (`side_servers.py`), so a
directory it must not use stops it before the kubelet hears of it; the
server (`server.py`) answers on it once the pools are registered. Nothing here
imports CNI code.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path

import structlog

from deviceplugin.listener import Listener

log = structlog.get_logger(__name__)

SOCKET_MODE = 0o600
DIR_MODE = 0o700


async def listen(socket_path: Path, lock_dir: Path) -> Listener:
    """The socket, listening (answered once served) in a root-only directory.

    `lock_dir` counts as netdp's own when it shares the directory (by default
    both are in /run/netdp). A socket file left by a dead daemon is replaced.
    `OSError` names the directory or socket and the problem.
    """
    directory = socket_path.parent
    own = {socket_path.name} | ({lock_dir.name} if lock_dir.parent == directory else set())
    secure_socket_dir(directory, own)
    socket_path.unlink(missing_ok=True)
    listener = await Listener.unix(socket_path)
    os.chmod(socket_path, SOCKET_MODE)
    return listener


def secure_socket_dir(directory: Path, netdp_files: Collection[str]) -> None:
    """Make `directory` (created if missing) enterable by its owner only, which must be us.

    A directory already closed to others is fine. One open to others is
    tightened to 0700 only when it is ours and holds nothing but netdp's own
    `netdp_files` (a hostPath volume arrives empty and 0755); anything else
    (another owner, the sticky bit of /tmp, other files as in /run) is a
    shared directory, which netdp will neither use nor lock others out of.
    `OSError` names the directory and the problem.
    """
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    info = directory.stat()
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise PermissionError(
            f"CNI socket directory {directory} belongs to uid {info.st_uid}, not to netdp "
            f"(uid {os.geteuid()}): give the socket a directory of its own"
        )
    if not mode & 0o077:
        return
    others = sorted(set(os.listdir(directory)) - set(netdp_files))
    if info.st_mode & stat.S_ISVTX or others:
        what = "has the sticky bit" if info.st_mode & stat.S_ISVTX else f"holds {others[:3]}"
        raise PermissionError(
            f"CNI socket directory {directory} is shared ({what}, mode {mode:o}) and netdp "
            "makes its socket's directory root-only: give the socket a directory of its own"
        )
    os.chmod(directory, DIR_MODE)
    log.info("cni_socket_dir_tightened", directory=str(directory), mode=f"{mode:o}")
