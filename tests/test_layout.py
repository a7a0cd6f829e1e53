"""Promises of the module layout that no single module's tests can see.

Each check imports modules in a fresh interpreter and looks at what else got
loaded: the pure core must not pull in a library or module that does I/O,
and the metrics registry must not pull in the daemon it observes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PURE_CORE = [
    "deviceplugin.model",
    "deviceplugin.pools",
    "deviceplugin.allocation",
    "deviceplugin.health",
    "deviceplugin.diff",
    "deviceplugin.config.values",
    "deviceplugin.config.schema",
    "deviceplugin.config.errors",
    "deviceplugin.config.convert",
    "deviceplugin.sysfs_values",
]
# Libraries that talk to sockets, netlink, udev, inotify or HTTP, and our modules that do.
IO_MODULES = [
    "grpc",
    "pyroute2",
    "pyudev",
    "asyncinotify",
    "prometheus_client",
    "h11",
    "deviceplugin.sysfs",
    "deviceplugin.routes",
    "deviceplugin.watch",
    "deviceplugin.server",
    "deviceplugin.kubelet",
    "deviceplugin.devinfo",
    "deviceplugin.daemon",
    "deviceplugin.http_endpoint",
    "deviceplugin.cni",
]


def loaded_after(*modules: str) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def top_level(loaded: set[str], names: list[str]) -> list[str]:
    return sorted(n for n in names if n in loaded)


@pytest.mark.parametrize("module", PURE_CORE)
def test_pure_core_imports_no_io(module: str) -> None:
    assert top_level(loaded_after(module), IO_MODULES) == []


def test_metrics_do_not_import_the_daemon() -> None:
    loaded = loaded_after("deviceplugin.metrics")
    assert top_level(loaded, ["deviceplugin.daemon", "deviceplugin.server", "grpc"]) == []
