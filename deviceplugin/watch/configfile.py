"""The config file, watched with inotify so an edit or a ConfigMap update reloads it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog
from asyncinotify import Inotify, Mask

log = structlog.get_logger(__name__)

CONFIGMAP_DATA_LINK = "..data"  # kubelet swaps this symlink atomically on a ConfigMap update
_FILE_EVENTS = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM
CONFIG_QUIET_S = 0.2  # editors write, then rename: one reload for both


class FileWatcher:
    """Calls `on_change` whenever `path` may now read differently.

    Watching the directory rather than the file survives editors that write a
    new file and rename it over the old one, and ConfigMap volumes, where the
    file is a symlink through `..data` and only `..data` changes.
    """

    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self.path = path
        self._on_change = on_change
        self._names = {path.name, CONFIGMAP_DATA_LINK}

    async def run(self) -> None:
        with Inotify() as inotify:
            inotify.add_watch(self.path.parent, _FILE_EVENTS)
            log.info("config_watch_started", directory=str(self.path.parent))
            async for event in inotify:
                if event.name is not None and str(event.name) in self._names:
                    log.debug("config_file_event", name=str(event.name), mask=str(event.mask))
                    self._on_change()
