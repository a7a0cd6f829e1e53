"""The CNI rules depend on the ports only: no pyroute2, no sysfs reader, no IPAM runner."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import deviceplugin.cni

CNI = Path(deviceplugin.cni.__file__).parent
RULES = ("add", "check", "delete", "origin", "ports", "repair", "resolve", "restore")
# What the rules may import: the ports, each other, plain records and protocol
# parsing, the device-info writer, logging, and pure stdlib modules.
ALLOWED = {
    *(f"deviceplugin.cni.{m}" for m in RULES),
    "deviceplugin.cni.types",
    "deviceplugin.devinfo",
    "deviceplugin.model",
    "structlog",
    "__future__",
    "collections.abc",
    "contextlib",
    "dataclasses",
    "errno",
    "pathlib",
    "re",
    "typing",
}
ADAPTERS = (
    "pyroute2",
    "deviceplugin.cni.netlink",
    "deviceplugin.cni.rtnetlink",
    "deviceplugin.cni.ipam",
    "deviceplugin.cni.sysfs_devices",
    "deviceplugin.cni.executor",
    "deviceplugin.sysfs",
    "deviceplugin.podresources",
)


def test_rules_import_only_ports_and_pure_modules() -> None:
    for name in RULES:
        tree = ast.parse((CNI / f"{name}.py").read_text())
        imported = {
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert imported <= ALLOWED, (name, imported - ALLOWED)


def test_rules_load_without_pyroute2() -> None:
    modules = ", ".join(f"deviceplugin.cni.{m}" for m in RULES)
    probe = (
        "import sys\n"
        "sys.modules['pyroute2'] = None  # any import of it fails\n"
        f"import {modules}\n"
        f"print(' '.join(m for m in {ADAPTERS!r} if sys.modules.get(m) is not None))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(CNI.parents[1])}  # this tree, not an installed one
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    assert proc.stdout.split() == []
