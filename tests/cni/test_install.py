"""Building the ehost-device binary into the package, and `netdp install-cni` copying it.

No root: the builds run in a copy of the project, the installs into temp dirs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cnilab import REPO
from helpers import elf_facts

from deviceplugin.cli import main as netdp_main
from deviceplugin.cni import install
from deviceplugin.cni.forwarder_build import PACKAGE_PATH, SOURCE, find_compiler

# Everything the forwarder asks of libc: system calls and string functions.
# Not NSS (getpwnam, getaddrinfo), not dlopen, not locale or stdio, which in a
# static glibc would look for files on the node at run time.
LIBC_CALLS = {
    "__errno_location", "clock_gettime", "close", "connect", "environ", "free", "getenv",
    "getsockopt", "memchr", "memcpy", "memset", "nanosleep", "poll", "read", "realloc",
    "recv", "send", "shutdown", "sigaction", "socket", "strcmp", "strerror",
    "strerrordesc_np", "strlen", "strncmp", "write", "__stack_chk_fail",
}  # fmt: skip


def test_install_prints_what_it_installed(
    forwarder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "opt" / "cni" / "bin"
    assert netdp_main(["install-cni", "--dest", str(dest)]) == 0
    installed = dest / "ehost-device"
    data = installed.read_bytes()
    assert data == forwarder.read_bytes()
    assert os.access(installed, os.X_OK)
    assert elf_facts(data) == {"type": "EXEC", "interpreter": False, "dynamic": False}
    out = capsys.readouterr().out
    assert out.startswith(f"installed {installed} ({len(data)} bytes, sha256 ")
    assert sorted(p.name for p in dest.iterdir()) == ["ehost-device"]  # no temp file left


def test_install_replaces_a_running_binary(forwarder: Path, tmp_path: Path) -> None:
    """A runtime may be running the old file: writing into it would fail with ETXTBSY."""
    dest = tmp_path / "bin"
    old = install.install_forwarder(dest).path
    running = subprocess.Popen(
        [str(old)], env={"CNI_COMMAND": "VERSION"}, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        with pytest.raises(OSError) as busy:
            old.open("r+b").close()  # what an in-place overwrite would meet
        assert "Text file busy" in str(busy.value)
        again = install.install_forwarder(dest)
        assert again.path == old and again.path.read_bytes() == forwarder.read_bytes()
    finally:
        out, _ = running.communicate(b"{}", timeout=30)
    assert running.returncode == 0 and b"supportedVersions" in out
    assert sorted(p.name for p in dest.iterdir()) == ["ehost-device"]


def test_install_without_a_binary_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(install, "BINARY", tmp_path / "no-such-binary")
    assert netdp_main(["install-cni", "--dest", str(tmp_path / "bin")]) == 1
    err = capsys.readouterr().err
    assert "has no ehost-device binary" in err
    assert "apt-get install gcc libc6-dev" in err and "container image ships it" in err
    assert not (tmp_path / "bin").exists() or not any((tmp_path / "bin").iterdir())


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """What an sdist holds, without a binary built in place."""
    copy = tmp_path / "src"
    copy.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, copy / name)
    shutil.copytree(
        REPO / "deviceplugin",
        copy / "deviceplugin",
        ignore=shutil.ignore_patterns("__pycache__", "ehost-device", ".ehost-device.*"),
    )
    return copy


def build_hook(project: Path, hook: str, out: Path) -> Path:
    """Run a PEP 517/660 hook of setuptools in `project`, as pip does; the wheel built."""
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return out / proc.stdout.split()[-1]


def test_pip_install_builds_the_binary_into_the_wheel(project_copy: Path, tmp_path: Path) -> None:
    wheel = build_hook(project_copy, "build_wheel", tmp_path / "dist")
    assert wheel.name.startswith("netdp-") and wheel.name.endswith("-py3-none-linux_x86_64.whl")
    with zipfile.ZipFile(wheel) as z:
        info = z.getinfo(PACKAGE_PATH.as_posix())
        assert info.external_attr >> 16 & 0o111, "not executable"
        assert elf_facts(z.read(info))["interpreter"] is False


def test_editable_install_builds_the_binary_in_place(project_copy: Path, tmp_path: Path) -> None:
    build_hook(project_copy, "build_editable", tmp_path / "dist")
    in_place = project_copy / PACKAGE_PATH
    assert elf_facts(in_place.read_bytes())["interpreter"] is False
    assert os.access(in_place, os.X_OK)


def test_forwarder_uses_nothing_of_libc_but_system_calls_and_strings(tmp_path: Path) -> None:
    cc = find_compiler()
    assert cc is not None, "no C compiler: scripts/test.sh installs gcc and libc6-dev"
    obj = tmp_path / "ehost-device.o"
    subprocess.run([*cc, "-std=c11", "-Os", "-c", "-o", str(obj), str(SOURCE)], check=True)
    nm = shutil.which("nm") or "nm"
    undefined = set(subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True,
                                   check=True).stdout.split()) - {"U"}  # fmt: skip
    assert undefined and undefined <= LIBC_CALLS, undefined - LIBC_CALLS
