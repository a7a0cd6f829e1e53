"""Event sources: the pure decisions, the coalescer, and real netlink/uevent sockets in a netns."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from asyncinotify import Mask
from helpers import in_netns, is_root, namespaces, sh
from pyroute2.netlink.rtnl.ifinfmsg import IFF_LOWER_UP, IFF_UP, ifinfmsg

from deviceplugin import watch
from deviceplugin.health import LinkState
from deviceplugin.watch import Coalescer, LinkMessage, Uevent

needs_root = pytest.mark.skipif(not is_root(), reason="needs root for network namespaces")

# --- uevents --------------------------------------------------------------------------


def test_uevent_relevance() -> None:
    def pci(action: str, pci_class: str | None) -> Uevent:
        props = {"PCI_CLASS": pci_class} if pci_class else {}
        return Uevent(action, "pci", "/devices/pci0000:00/0000:00:04.0/0000:01:00.0", props)

    assert watch.uevent_relevant(pci("add", "20000"), set())  # Ethernet controller
    assert watch.uevent_relevant(pci("bind", "28000"), set())  # other network controller
    assert not watch.uevent_relevant(pci("add", "10802"), set())  # NVMe
    assert watch.uevent_relevant(pci("remove", None), set())  # unknown: better rescan
    vf_netdev = Uevent("add", "net", "/devices/pci0000:00/0000:01:10.0/net/ens1v0", {})
    assert watch.uevent_relevant(vf_netdev, set())
    pod_veth = Uevent("add", "net", "/devices/virtual/net/veth1234", {"INTERFACE": "veth1234"})
    assert not watch.uevent_relevant(pod_veth, {"ens1"})
    known = Uevent("change", "net", "/devices/virtual/net/vx1", {"INTERFACE": "vx1"})
    assert watch.uevent_relevant(known, {"vx1"})
    no_interface_key = Uevent("change", "net", "/devices/virtual/net/vx1", {})
    assert watch.uevent_relevant(no_interface_key, {"vx1"})
    renamed = Uevent(
        "move",
        "net",
        "/devices/virtual/net/new0",
        {"INTERFACE": "new0", "DEVPATH_OLD": "/devices/virtual/net/vx1"},
    )
    assert watch.uevent_relevant(renamed, {"vx1"})
    assert not watch.uevent_relevant(Uevent("add", "block", "/devices/virtual/block/loop0"), set())
    assert watch.uevent_relevant(watch.OVERFLOW, set())


def test_uevent_source_follows_udevd(tmp_path: Path) -> None:
    control = tmp_path / "control"
    assert watch.uevent_source(control) == "kernel"
    control.touch()
    assert watch.uevent_source(control) == "udev"


# --- link messages ------------------------------------------------------------------


def encode(kind: int, index: int, name: str, flags: int, carrier: int | None, family=0) -> bytes:
    msg = ifinfmsg()
    msg["header"]["type"] = kind
    msg["header"]["sequence_number"] = 0
    msg["family"] = family
    msg["index"] = index
    msg["flags"] = flags
    attrs = [("IFLA_IFNAME", name), ("IFLA_OPERSTATE", "UP" if carrier else "LOWERLAYERDOWN")]
    if carrier is not None:
        attrs.append(("IFLA_CARRIER", carrier))
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


NEWLINK, DELLINK = 16, 17


def test_parse_link_messages() -> None:
    data = (
        encode(NEWLINK, 5, "ens1", IFF_UP, 0)
        + encode(NEWLINK, 6, "ens2", IFF_UP | IFF_LOWER_UP, None)
        + encode(DELLINK, 7, "ens3", 0, 0)
        + encode(NEWLINK, 5, "ens1", IFF_UP, 1, family=7)  # AF_BRIDGE port message: skipped
    )
    messages = list(watch.parse_link_messages(data))
    assert messages == [
        LinkMessage(state=LinkState("ens1", 5, True, False, "lowerlayerdown")),
        LinkMessage(state=LinkState("ens2", 6, True, True, "lowerlayerdown")),
        LinkMessage(deleted=True, state=LinkState("ens3", 7, False, False, "lowerlayerdown")),
    ]
    assert messages[0].state is not None and messages[0].state.down


def test_link_changes_report_only_health_inputs() -> None:
    links: dict[int, LinkState] = {}
    up = LinkState("ens1", 5, True, True, "up")
    assert watch.link_changes(links, [LinkMessage(state=up)]) == {"ens1"}
    # the same state again (an MTU or counter change): nothing to re-judge
    assert watch.link_changes(links, [LinkMessage(state=up)]) == frozenset()
    down = LinkState("ens1", 5, True, False, "lowerlayerdown")
    assert watch.link_changes(links, [LinkMessage(state=down)]) == {"ens1"}
    renamed = LinkState("net1", 5, True, False, "lowerlayerdown")
    assert watch.link_changes(links, [LinkMessage(state=renamed)]) == {"ens1", "net1"}
    assert watch.link_changes(links, [LinkMessage(deleted=True, state=renamed)]) == {"net1"}
    assert links == {}
    assert watch.link_changes(links, [LinkMessage(deleted=True, state=renamed)]) == frozenset()


def test_live_mode_description() -> None:
    full = watch.live_mode("kernel", True, 30, [])
    assert full.rescan_interval_s is None
    assert full.describe() == "hot-plug from kernel uevents, link state from netlink"
    partial = watch.live_mode(None, True, 30, ["no uevent socket: EPERM"])
    assert partial.rescan_interval_s == 30
    assert "periodic rescan every 30 s" in partial.describe()
    assert "EPERM" in partial.describe()


# --- coalescer ----------------------------------------------------------------------


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_burst_becomes_one_run() -> None:
    async def main() -> tuple[list[int], Coalescer]:
        calls: list[int] = []
        ran = asyncio.Queue[int]()

        async def action(n: int) -> None:
            calls.append(n)
            ran.put_nowait(n)

        c = Coalescer(action, quiet=0.02, max_delay=1.0, name="t")
        for _ in range(256):
            c.trigger()
        await ran.get()
        c.trigger()  # marker: a later trigger's run comes after anything the burst left
        await ran.get()
        return calls, c

    calls, c = run(main())
    assert calls == [256, 1]
    assert (c.received, c.runs, c.coalesced) == (257, 2, 255)


def test_triggers_during_a_run_make_exactly_one_more() -> None:
    async def main() -> list[int]:
        calls: list[int] = []
        started, release = asyncio.Event(), asyncio.Event()
        ran = asyncio.Queue[int]()

        async def action(n: int) -> None:
            calls.append(n)
            if len(calls) == 1:
                started.set()
                await release.wait()
            ran.put_nowait(n)

        c = Coalescer(action, quiet=0, max_delay=0, name="t")
        c.trigger()
        await started.wait()  # the first run is now blocked
        for _ in range(10):
            c.trigger()
        release.set()
        assert [await ran.get(), await ran.get()] == [1, 10]
        c.trigger()  # marker: nothing else was pending before it
        assert await ran.get() == 1
        return calls

    assert run(main()) == [1, 10, 1]


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test says so: timers fire by the
    coalescer's arithmetic, not by how busy the machine is."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now


def test_max_delay_serves_a_source_that_never_goes_quiet() -> None:
    """A trigger every 10 ms, inside the 50 ms quiet window, for ever: the run comes
    200 ms after the first trigger all the same, covering every trigger until then."""
    loop = ManualClockLoop()

    async def main() -> tuple[list[int], list[float]]:
        calls: list[int] = []
        ran_at: list[float] = []

        async def action(n: int) -> None:
            calls.append(n)
            ran_at.append(loop.time())

        c = Coalescer(action, quiet=0.05, max_delay=0.2, name="t")
        while loop.now < 0.5:  # 500 ms of clock, 50 triggers
            c.trigger()
            loop.now = round(loop.now + 0.01, 2)
            await asyncio.sleep(0)  # due timers run, nothing else moves the clock
        await c.aclose()
        return calls, ran_at

    try:
        calls, ran_at = loop.run_until_complete(main())
    finally:
        loop.close()
    # Every max_delay (the run's task starts a tick or two after its timer), though the
    # quiet window never opened; without max_delay nothing would have run at all.
    assert len(ran_at) == 2 and 0.2 <= ran_at[0] < 0.25 and 0.4 <= ran_at[1] < 0.45
    assert calls[0] >= 20  # every trigger from 0.00 on


def test_action_failure_is_logged_and_the_next_burst_still_runs() -> None:
    async def main() -> list[int]:
        calls: list[int] = []
        failed, ok = asyncio.Event(), asyncio.Event()

        async def action(n: int) -> None:
            calls.append(n)
            if len(calls) == 1:
                failed.set()
                raise RuntimeError("scan failed")
            ok.set()

        c = Coalescer(action, quiet=0, max_delay=0, name="t")
        c.trigger()
        await failed.wait()
        c.trigger(3)
        await ok.wait()
        return calls

    assert run(main()) == [1, 3]


# --- config file -------------------------------------------------------------------


class WatcherLog:
    """Stands in for the file watcher's logger: what it saw, in the order it saw it."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []
        self.changed = asyncio.Event()

    def _record(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))
        self.changed.set()

    info = debug = warning = _record

    def names(self) -> list[str]:
        return [str(kw["name"]) for event, kw in self.lines if event == "config_file_event"]

    async def wait_for(
        self, event: str, since: int = 0, name: str | None = None, mask: Mask | None = None
    ) -> None:
        """Until a line of `event` (for `name`, with `mask` among its inotify flags) is
        logged after the first `since` lines; fails after 5 s."""

        def matches(e: str, kw: dict) -> bool:
            return (
                e == event
                and (name is None or str(kw.get("name")) == name)
                and (mask is None or bool(int(str(kw.get("mask"))) & mask))
            )

        async with asyncio.timeout(5):
            while not any(matches(e, kw) for e, kw in self.lines[since:]):
                self.changed.clear()
                await self.changed.wait()


def test_file_watcher_sees_writes_renames_and_configmap_swaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kind of change calls back; a file beside the config does not. The watcher's
    own log says which name each event was for, so every step waits for its own event,
    and a later change is the marker that the unrelated file was let through or not."""
    config = tmp_path / "config.json"
    log = WatcherLog()
    monkeypatch.setattr(watch.configfile, "log", log)

    async def main() -> tuple[int, list[str]]:
        calls = 0

        def on_change() -> None:
            nonlocal calls
            calls += 1

        task = asyncio.create_task(watch.FileWatcher(config, on_change).run())
        try:
            await log.wait_for("config_watch_started")
            mark = len(log.lines)
            config.write_text("{}")
            await log.wait_for("config_file_event", mark, name="config.json", mask=Mask.CLOSE_WRITE)
            mark = len(log.lines)
            (tmp_path / "new.json").write_text("{}")
            (tmp_path / "new.json").rename(config)
            await log.wait_for("config_file_event", mark, name="config.json", mask=Mask.MOVED_TO)
            mark = len(log.lines)
            (tmp_path / "..2024_v2").mkdir()
            (tmp_path / "..data_tmp").symlink_to("..2024_v2")
            (tmp_path / "..data_tmp").rename(tmp_path / "..data")
            await log.wait_for("config_file_event", mark, name="..data", mask=Mask.MOVED_TO)
            mark, before = len(log.lines), len(log.names())
            (tmp_path / "unrelated.txt").write_text("x")
            (tmp_path / "marker.json").write_text("{}")
            (tmp_path / "marker.json").rename(config)
            await log.wait_for("config_file_event", mark, name="config.json", mask=Mask.MOVED_TO)
            return calls, log.names()[before:]
        finally:
            task.cancel()

    calls, after_unrelated = run(main())
    assert after_unrelated == ["config.json"]  # the marker's rename, and nothing before it
    assert calls == len(log.names())  # one call per event of ours, none for the others


# --- real sockets in a namespace -------------------------------------------------------


@needs_root
def test_link_monitor_sees_a_veth_peer_go_down_and_up() -> None:
    with namespaces() as nss:
        ns, peer_ns = nss.add("lm"), nss.add("lmp")
        mine, peer = f"lm{nss.tag}", f"lp{nss.tag}"
        nss.veth(mine, ns, peer, peer_ns)
        sh("ip", "-n", ns, "link", "set", mine, "up")

        async def main() -> None:
            changes: asyncio.Queue[frozenset[str]] = asyncio.Queue()
            with in_netns(ns):
                monitor = watch.LinkMonitor(changes.put_nowait)
                monitor.open()
            try:
                # the dump: up, but the peer is down, so no carrier
                assert monitor.links[mine].admin_up and monitor.links[mine].down
                assert peer not in monitor.links  # another namespace
                monitor.attach(asyncio.get_running_loop())

                async def wait_for(down: bool) -> None:
                    while True:
                        names = await asyncio.wait_for(changes.get(), 5)
                        if mine in names and monitor.links[mine].down is down:
                            return

                sh("ip", "-n", peer_ns, "link", "set", peer, "up")
                await wait_for(False)
                assert monitor.links[mine].carrier is True
                sh("ip", "-n", peer_ns, "link", "set", peer, "down")
                await wait_for(True)
                sh("ip", "-n", ns, "link", "set", mine, "name", f"r{mine}"[:15])
                names = await asyncio.wait_for(changes.get(), 5)
                assert mine in names and mine not in monitor.links
            finally:
                monitor.close()

        run(main())


@needs_root
def test_uevent_monitor_receives_kernel_events_from_its_namespace() -> None:
    with namespaces() as nss:
        ns, peer_ns = nss.add("ue"), nss.add("uep")
        mine = f"ue{nss.tag}"
        nss.veth(mine, ns, f"up{nss.tag}", peer_ns)

        async def main() -> list[Uevent]:
            events: list[Uevent] = []
            got = asyncio.Event()

            def on_event(e: Uevent) -> None:
                events.append(e)
                if len(events) >= 3:
                    got.set()

            with in_netns(ns):
                monitor = watch.UeventMonitor(on_event, source="kernel")
                monitor.open()
            try:
                monitor.attach(asyncio.get_running_loop())
                script = f"for i in 1 2 3; do echo change > /sys/class/net/{mine}/uevent; done"
                await asyncio.to_thread(
                    subprocess.run, ["ip", "netns", "exec", ns, "sh", "-c", script], check=True
                )
                await asyncio.wait_for(got.wait(), 5)
            finally:
                monitor.close()
            return events

        events = run(main())
        assert [(e.action, e.subsystem) for e in events] == [("change", "net")] * 3
        assert events[0].properties["INTERFACE"] == mine
        assert watch.uevent_relevant(events[0], {mine})
        assert not watch.uevent_relevant(events[0], set())


@needs_root
def test_probe_reports_events_here() -> None:
    mode = watch.probe(30)
    assert mode.netlink and mode.uevents in ("kernel", "udev")
    assert mode.rescan_interval_s is None
    forced = watch.probe(5, periodic_only=True)
    assert forced.rescan_interval_s == 5 and not forced.netlink
