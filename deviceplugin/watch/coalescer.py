"""One run of an action per burst of triggers.

256 VF uevents from one `sriov_numvfs` write, or an editor's write-then-rename,
should cost one rescan or one reload, soon after the burst ends and never
much later than it began.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


class Coalescer:
    """Runs `action` once per burst of triggers, trailing edge.

    The run starts `quiet` seconds after the last trigger, but no later than
    `max_delay` after the first one of the burst, so a source that never goes
    quiet still gets served. Triggers that arrive while the action runs make
    one more run afterwards; runs never overlap. `action` receives how many
    triggers it covers. `quiet=0` runs on the next loop iteration, which still
    merges everything that arrived in the same wakeup.
    """

    def __init__(
        self,
        action: Callable[[int], Awaitable[None]],
        *,
        quiet: float,
        max_delay: float,
        name: str,
    ) -> None:
        self._action = action
        self.quiet = quiet
        self.max_delay = max(max_delay, quiet)
        self.name = name
        self.received = 0
        self.runs = 0
        self._pending = 0
        self._first = 0.0
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def coalesced(self) -> int:
        """Triggers that did not get a run of their own."""
        return self.received - self._pending - self.runs

    def trigger(self, count: int = 1) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._pending:
            self._first = now
        self._pending += count
        self.received += count
        self._last = now
        if self._timer is None and self._task is None:
            self._timer = loop.call_at(self._deadline(), self._fire)

    def _deadline(self) -> float:
        return min(self._last + self.quiet, self._first + self.max_delay)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._deadline()
        if loop.time() < deadline:  # more triggers came in meanwhile: wait for quiet
            self._timer = loop.call_at(deadline, self._fire)
            return
        self._timer = None
        self._task = loop.create_task(self._run(), name=f"coalesced-{self.name}")

    async def _run(self) -> None:
        batch, self._pending = self._pending, 0
        self.runs += 1
        try:
            await self._action(batch)
        except Exception:
            log.exception("coalesced_action_failed", source=self.name, events=batch)
        finally:
            self._task = None
            if self._pending:
                self._timer = asyncio.get_running_loop().call_at(self._deadline(), self._fire)

    async def aclose(self) -> None:
        """Drop pending triggers and cancel a running action (shutting down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = 0
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
