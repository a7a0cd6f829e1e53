"""The `netdp` command line: run the daemon, inspect the node, check a config.

Every `run` flag also reads an environment variable (`NETDP_<FLAG>`), which
is how the DaemonSet sets them. Configuration problems are reported before
anything on the node is touched, with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deviceplugin import __version__

if TYPE_CHECKING:
    from deviceplugin.config import Config
    from deviceplugin.daemon import Settings
    from deviceplugin.diff import NodeState

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_RUNTIME = 1


class Refused(Exception):
    """A bad flag or config file: printed as `netdp: <message>`, exit status 2,
    before anything on the node is touched."""


def _env_default(flag: str, default: str | None) -> str | None:
    return os.environ.get("NETDP_" + flag.upper().replace("-", "_"), default)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    from deviceplugin.api.constants import DEVICE_PLUGIN_DIR
    from deviceplugin.cni.wire import DEFAULT_SOCKET as CNI_SOCKET
    from deviceplugin.devinfo import DEFAULT_DEVINFO_DIR
    from deviceplugin.listen_address import DEFAULT_ADDRESS

    def flag(name: str, default: str | None, help_text: str) -> None:
        env = "NETDP_" + name.upper().replace("-", "_")
        p.add_argument(
            f"--{name}", default=_env_default(name, default), help=f"{help_text} (env {env})"
        )

    flag("config", None, "pool config file, JSON or YAML; default: the built-in kernel.org/virt")
    flag("device-plugin-path", str(DEVICE_PLUGIN_DIR), "kubelet device-plugin directory")
    flag("sysfs-root", "/sys", "where sysfs is mounted")
    flag("devinfo-dir", str(DEFAULT_DEVINFO_DIR), "device-info spec directory ('' disables)")
    flag("log-level", "info", "debug, info, warning or error")
    flag("log-format", None, "json or console; default: json unless stderr is a terminal")
    flag(
        "metrics-address",
        DEFAULT_ADDRESS,
        "/metrics, /healthz, /readyz listen address; '0' disables",
    )
    flag("cni-socket", CNI_SOCKET, "socket the ehost-device forwarder talks to; '' disables")
    _add_watch_flags(p)


def _add_watch_flags(p: argparse.ArgumentParser) -> None:
    """How changes are noticed; `list` takes them too, to say what `run` would do."""
    p.add_argument(
        "--watch",
        default=_env_default("watch", "auto"),
        help="auto: kernel uevents and netlink, periodic rescans only for what is missing; "
        "periodic: rescans only (env NETDP_WATCH)",
    )
    p.add_argument(
        "--rescan-interval",
        default=_env_default("rescan-interval", "30"),
        help="seconds between rescans when an event source is missing (env NETDP_RESCAN_INTERVAL)",
    )


def _watch_settings(args: argparse.Namespace) -> tuple[str, float]:
    """Validated `--watch` and `--rescan-interval`; the refusal names the flag."""
    if args.watch not in ("auto", "periodic"):
        raise Refused(f"--watch: expected auto or periodic, got {args.watch!r}")
    try:
        interval = float(args.rescan_interval)
    except ValueError:
        interval = 0.0
    if not 0 < interval < float("inf"):
        raise Refused(
            f"--rescan-interval: expected a number of seconds > 0, got {args.rescan_interval!r}"
        )
    return args.watch, interval


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netdp", description="Kubernetes device plugin for PCI network devices."
    )
    parser.add_argument("--version", action="version", version=f"netdp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the device plugin daemon")
    _add_run_flags(run)

    lst = sub.add_parser("list", help="show every network device, its pool or why it is excluded")
    lst.add_argument("--config", default=_env_default("config", None))
    lst.add_argument("--sysfs-root", default=_env_default("sysfs-root", "/sys"))
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    _add_watch_flags(lst)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file and show its pools")
    check.add_argument("file", type=Path)

    inst = sub.add_parser(
        "install-cni",
        help="install the static ehost-device CNI plugin (DaemonSet init container)",
    )
    inst.add_argument("--dest", type=Path, default=Path("/opt/cni/bin"))

    demo = sub.add_parser(
        "demo", help="run the daemon on a fake virtio lab against a built-in kubelet stand-in"
    )
    demo.add_argument("--log-level", default="warning")
    return parser


def _load_config(path: str | Path | None) -> Config:
    from deviceplugin.config import ConfigError, default_config, load_config

    try:
        return default_config() if not path else load_config(Path(path))
    except ConfigError as exc:
        raise Refused(f"invalid configuration: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from deviceplugin.daemon import Settings, WatchMode
    from deviceplugin.listen_address import parse_address

    watch, rescan_interval = _watch_settings(args)
    try:
        metrics_address = parse_address(args.metrics_address)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    config = _load_config(args.config)
    for warning in config.warnings:
        print(f"netdp: warning: {warning}", file=sys.stderr)
    settings = Settings(
        device_plugin_path=Path(args.device_plugin_path),
        sysfs_root=Path(args.sysfs_root),
        devinfo_dir=Path(args.devinfo_dir) if args.devinfo_dir else None,
        config_path=Path(args.config) if args.config else None,
        rescan_interval_s=rescan_interval,
        watch=WatchMode(watch),
    )
    cni_socket = Path(args.cni_socket) if args.cni_socket else None
    return asyncio.run(_serve(config, settings, metrics_address, cni_socket))


async def _serve(
    config: Config,
    settings: Settings,
    metrics_address: tuple[str, int] | None,
    cni_socket: Path | None,
) -> int:
    """The daemon plus its two side servers: metrics/probes and the CNI socket.

    Their sockets are opened before the daemon starts, so a side server that
    cannot listen stops `run` before anything registers; their code is loaded
    and answers once the pools are registered (`side_servers.py`). Both stop
    after the daemon has cleaned up its kubelet sockets.
    """
    import asyncio
    import signal

    from deviceplugin.daemon import Daemon
    from deviceplugin.side_servers import SideServers

    side = SideServers(metrics_address, cni_socket, settings.sysfs_root)
    daemon = Daemon(config, settings, observer=side.observer, repair=side.repair)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    run: asyncio.Task[None] | None = None

    async def start_side_servers() -> None:
        await side.start(
            healthy=lambda: run is None or not run.done(),
            registered=daemon.registration_status,
        )

    try:
        await side.listen()
        run = asyncio.create_task(daemon.run(stop, start_side_servers), name="daemon")
        await run
    except OSError as exc:
        print(f"netdp: cannot serve: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        await side.stop()
    return EXIT_OK


def _rows(state: NodeState) -> list[dict[str, object]]:
    rows = []
    placed = {d.pci_address: r for r, pool in state.pools.items() for d in pool.devices}
    for address, dev in sorted(state.node.devices.items()):
        verdict = state.verdicts.get(address)
        rows.append(
            {
                "pci": address,
                "netdev": dev.netdev,
                "netdev_state": dev.netdev_state.value,
                "driver": dev.driver,
                "vendor": dev.vendor,
                "device": dev.device,
                "numa_node": dev.numa_node,
                "pf": dev.pf_address,
                "vf_index": dev.vf_index,
                "vfio": dev.vfio_device,
                "pool": placed.get(address),
                "excluded": state.excluded.get(address),
                "health": verdict.health.value if verdict else None,
                "health_reason": verdict.reason if verdict else None,
                "warnings": list(dev.warnings),
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """A fixed-width table for people; `--json` is the stable interface."""
    headers = ["PCI", "NETDEV", "DRIVER", "ID", "NUMA", "PF", "POOL / EXCLUDED"]
    lines = []
    for r in rows:
        netdev = r["netdev"] or ("(in another netns)" if r["netdev_state"] == "elsewhere" else "-")
        where = r["pool"] or f"excluded: {r['excluded']}"
        if r["health"] == "Unhealthy":
            where = f"{where} (Unhealthy: {r['health_reason']})"
        lines.append(
            [
                str(r["pci"]),
                str(netdev),
                str(r["driver"] or "-"),
                f"{r['vendor']}:{r['device']}",
                "-" if r["numa_node"] is None else str(r["numa_node"]),
                str(r["pf"] or "-"),
                str(where),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return "\n".join(fmt.format(*row) for row in [headers, *lines])


def cmd_list(args: argparse.Namespace) -> int:
    """What `netdp run` would advertise here, with the same config and watch flags."""
    from deviceplugin import watch
    from deviceplugin.survey import survey

    watch_mode, rescan_interval = _watch_settings(args)
    config = _load_config(args.config)
    live = watch.probe(rescan_interval, periodic_only=watch_mode == "periodic")
    # Without netlink the daemon judges links by sysfs alone; so does this view.
    state = survey(config.pools, Path(args.sysfs_root), links=None if live.netlink else {})
    rows = _rows(state)
    if args.json:
        print(
            json.dumps(
                {
                    "default_route_interfaces": sorted(state.default_route_ifaces),
                    "live_updates": {
                        "mode": live.describe(),
                        "uevents": live.uevents,
                        "netlink": live.netlink,
                        "rescan_interval_s": live.rescan_interval_s,
                        "problems": list(live.problems),
                    },
                    "devices": rows,
                },
                indent=2,
            )
        )
    elif rows:
        print(format_table(rows))
    else:
        print(f"no PCI network devices found under {args.sysfs_root}")
    if not args.json:
        print(f"\nlive updates: {live.describe()}")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    from deviceplugin.allocation import env_var_name

    config = _load_config(args.file)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.file}: OK, {len(config.pools)} pool(s)")
    for pool in config.pools:
        print(f"  {pool.resource_name}  (env {env_var_name(pool.resource_name)})")
    return EXIT_OK


def cmd_install_cni(args: argparse.Namespace) -> int:
    from deviceplugin.cni.install import NoForwarder, install_forwarder

    try:
        installed = install_forwarder(args.dest)
    except (OSError, NoForwarder) as exc:
        print(f"netdp: install-cni: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(installed.describe())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from deviceplugin.demo import run_demo

    return run_demo(log_level=args.log_level)


def _configure_logs(args: argparse.Namespace) -> None:
    """Every command logs to stderr, set up once here: stdout is only the command's output.

    `run` and `demo` take their level (and `run` its format) from flags; the
    one-shot commands show warnings, such as a device the scan had to skip.
    """
    from deviceplugin import logs

    level, fmt = "warning", None
    if args.command == "run":
        if args.log_format not in (None, "json", "console"):
            raise Refused(f"--log-format: expected json or console, got {args.log_format!r}")
        level, fmt = args.log_level, args.log_format
    elif args.command == "demo":
        level, fmt = args.log_level, "console"
    try:
        logs.configure(level, fmt)
    except ValueError as exc:
        raise Refused(f"--log-level: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "run": cmd_run,
        "list": cmd_list,
        "config": cmd_config_check,
        "install-cni": cmd_install_cni,
        "demo": cmd_demo,
    }
    try:
        _configure_logs(args)
        return commands[args.command](args)
    except Refused as exc:
        print(f"netdp: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
