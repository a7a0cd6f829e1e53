"""stdout is the command's output and nothing else, also when the scan has to complain.

A device whose sysfs `vendor` holds bytes that are not text is skipped with a
warning; that warning, and every other log line, belongs on stderr, or
`netdp list --json | jq` breaks on the node where it is needed most.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import NETDP

from deviceplugin import __version__
from deviceplugin.allocation import env_var_name
from deviceplugin.cli import format_table, main
from deviceplugin.sim.fakesysfs import FakeSysfs

GOOD, DEGRADED = "0000:00:04.0", "0000:00:05.0"


@pytest.fixture
def degraded_sysfs(tmp_path: Path) -> Path:
    fs = FakeSysfs(tmp_path / "sys")
    fs.add_virtio_nic(GOOD, "ndpgood")
    fs.add_virtio_nic(DEGRADED, "ndpbad")
    (fs.pci_dir(DEGRADED) / "uevent").unlink()  # the ids from their files, then
    fs.write_attr(DEGRADED, "vendor", b"\xff\xfe\n")
    return tmp_path / "sys"


def netdp(sysfs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A `netdp` process on a node whose sysfs holds the degraded device."""
    env = {**os.environ, "NETDP_SYSFS_ROOT": str(sysfs)}
    return subprocess.run(
        [*NETDP, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def assert_skip_warning_on_stderr(result: subprocess.CompletedProcess[str]) -> None:
    assert "sysfs_device_skipped" in result.stderr and DEGRADED in result.stderr
    assert "sysfs_device_skipped" not in result.stdout


def test_list_json_is_only_json(degraded_sysfs: Path) -> None:
    result = netdp(degraded_sysfs, "list", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # the whole of stdout is the document
    assert [r["pci"] for r in data["devices"]] == [GOOD]
    assert_skip_warning_on_stderr(result)


def test_list_table_is_only_the_table(degraded_sysfs: Path) -> None:
    data = json.loads(netdp(degraded_sysfs, "list", "--json").stdout)
    result = netdp(degraded_sysfs, "list")
    assert result.returncode == 0, result.stderr
    expected = format_table(data["devices"]) + "\n\nlive updates: "
    expected += data["live_updates"]["mode"] + "\n"
    assert result.stdout == expected
    assert_skip_warning_on_stderr(result)


def test_config_check_prints_only_its_report(degraded_sysfs: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("resourceList:\n- resourceName: nic\n  selectors: {drivers: [igbvf]}\n")
    result = netdp(degraded_sysfs, "config", "check", str(config))
    assert result.returncode == 0, result.stderr
    name = "intel.com/nic"
    assert result.stdout == f"{config}: OK, 1 pool(s)\n  {name}  (env {env_var_name(name)})\n"


def test_install_cni_prints_only_what_it_installed(degraded_sysfs: Path, tmp_path: Path) -> None:
    result = netdp(degraded_sysfs, "install-cni", "--dest", str(tmp_path / "bin"))
    assert result.returncode == 0, result.stderr
    plugin = tmp_path / "bin" / "ehost-device"
    data = plugin.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert result.stdout == f"installed {plugin} ({len(data)} bytes, sha256 {digest})\n"


def test_version_prints_only_the_version(degraded_sysfs: Path) -> None:
    result = netdp(degraded_sysfs, "--version")
    assert (result.returncode, result.stdout) == (0, f"netdp {__version__}\n")


def test_in_process_entry_point_keeps_logs_off_stdout(
    degraded_sysfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`main()` called in process: the logs follow `sys.stderr` as it is at each line."""
    assert main(["list", "--json", "--sysfs-root", str(degraded_sysfs)]) == 0
    out, err = capsys.readouterr()
    assert [r["pci"] for r in json.loads(out)["devices"]] == [GOOD]
    assert "sysfs_device_skipped" in err
    assert main(["list", "--json", "--sysfs-root", str(degraded_sysfs)]) == 0
    out, err = capsys.readouterr()  # a second capture: no stale stream kept from the first
    assert json.loads(out) and "sysfs_device_skipped" in err
