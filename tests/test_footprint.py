"""A command loads only what it uses (issue 13): every library import is paid on every node.

Each check runs `netdp` in a fresh interpreter, the way a node does, and
reads `sys.modules` as the command exits: `config check` needs neither gRPC
nor netlink nor metrics, `list` no gRPC and no metrics, `run` without
metrics no prometheus_client and without the CNI socket no CNI code.
Importing the daemon leaves pyroute2 and libudev to the moment its event
sources open, which comes after the pools are served, and `run` loads its
side servers (metrics, CNI) only after registering.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from deviceplugin.sim.fakesysfs import virtio_lab

REPO = Path(__file__).resolve().parents[1]
# netdp's `main` in a fresh interpreter; the modules it loaded go to argv[1] at exit.
RUN_AND_RECORD = (
    "import atexit, json, sys\n"
    "out, argv = sys.argv[1], sys.argv[2:]\n"
    "atexit.register(lambda: open(out, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "from deviceplugin.cli import main\n"
    "sys.exit(main(argv))\n"
)
CNI_CODE = [
    "deviceplugin.cni.server",
    "deviceplugin.cni.executor",
    "deviceplugin.cni.netlink",
    "deviceplugin.cni.rtnetlink",
]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # this tree, not an installed one


def netdp_command(record: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", RUN_AND_RECORD, str(record), *args]


def loaded(record: Path, names: list[str]) -> list[str]:
    modules = set(json.loads(record.read_text()))
    return sorted(n for n in names if n in modules)


def test_config_check_loads_no_io_library(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"resourceList": [{"resourceName": "a", "selectors": {}}]}))
    record = tmp_path / "modules.json"
    proc = subprocess.run(
        netdp_command(record, "config", "check", str(config)),
        capture_output=True, text=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    heavy = ["grpc", "pyroute2", "prometheus_client", "pyudev", "h11", "asyncinotify", "yaml"]
    assert loaded(record, [*heavy, *CNI_CODE, "deviceplugin.daemon"]) == []


def test_list_loads_neither_grpc_nor_metrics_nor_cni_code(tmpfs_path: Path) -> None:
    virtio_lab(tmpfs_path / "sys")
    record = tmpfs_path / "modules.json"
    proc = subprocess.run(
        netdp_command(record, "list", "--sysfs-root", str(tmpfs_path / "sys")),
        capture_output=True, text=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "0000:01:00.0" in proc.stdout
    # pyroute2 it does need: the default routes and the link states it shows are netlink's.
    others = ["grpc", "prometheus_client", "h11", "deviceplugin.server", "deviceplugin.kubelet"]
    assert loaded(record, [*others, *CNI_CODE]) == []


def test_run_without_metrics_and_cni_loads_neither(tmpfs_path: Path) -> None:
    virtio_lab(tmpfs_path / "sys")
    record = tmpfs_path / "modules.json"
    command = netdp_command(
        record, "run", "--sysfs-root", str(tmpfs_path / "sys"),
        "--device-plugin-path", str(tmpfs_path / "dp"), "--devinfo-dir", "",
        "--metrics-address", "0", "--cni-socket", "", "--log-format", "json",
    )  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the first scan applied: start-up is over
            if '"discovery_done"' in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    modules = set(json.loads(record.read_text()))
    assert "deviceplugin.daemon" in modules and "pyroute2" in modules  # it did run and watch
    assert loaded(record, ["prometheus_client", "h11", "deviceplugin.metrics", *CNI_CODE]) == []


def modules_after_importing(*names: str) -> set[str]:
    """Every module loaded once a fresh interpreter has imported `names`."""
    probe = f"import json, sys\nimport {', '.join(names)}\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, check=True
    )
    return set(json.loads(proc.stdout))


def test_daemon_and_cni_server_import_without_event_sources_or_netlink() -> None:
    modules = modules_after_importing(
        "deviceplugin.cli", "deviceplugin.daemon", "deviceplugin.cni.server"
    )
    late = ["pyroute2", "pyudev", "prometheus_client", "h11", "yaml"]
    late += ["deviceplugin.watch.links", "deviceplugin.cni.netlink", "deviceplugin.cni.rtnetlink"]
    assert sorted(n for n in late if n in modules) == []


def test_what_run_imports_to_register_leaves_out_the_side_servers() -> None:
    """`netdp run` opens its side servers' sockets before registering and loads their
    code after (side_servers.py): the modules it needs up to then do not pull it in."""
    modules = modules_after_importing(
        "deviceplugin.cli", "deviceplugin.daemon", "deviceplugin.side_servers"
    )
    late = ["prometheus_client", "h11", "deviceplugin.metrics", "deviceplugin.http_endpoint"]
    assert sorted(n for n in [*late, *CNI_CODE] if n in modules) == []


# Each late entry point into pyroute2, as the daemon's worker threads reach them at start:
# opening the event sources, the scan's default-route lookup, the first CNI call.
RACE = """
import sys, threading
from deviceplugin import routes, watch
from deviceplugin.cni import executor
barrier = threading.Barrier(4)
errors = []
def enter(load):
    barrier.wait()
    try:
        load()
    except Exception as exc:
        errors.append(repr(exc))
entries = (
    lambda: watch.probe(60.0),  # opens and closes the event sockets: nothing changes
    lambda: watch.LinkMonitor,
    routes.default_route_interfaces,  # reads this namespace's routes: no change made
    executor._netlink_namespaces,
)
threads = [threading.Thread(target=enter, args=(e,)) for e in entries]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"""


def test_worker_threads_that_first_need_pyroute2_together_all_get_it() -> None:
    # Two threads meeting inside pyroute2's circular imports failed one CNI call with
    # "cannot import name 'ifinfmsg' from partially initialized module".
    for _ in range(8):
        out = subprocess.run(
            [sys.executable, "-c", RACE], capture_output=True, text=True, check=True, timeout=60
        )
        assert out.stdout.strip() == "[]"
