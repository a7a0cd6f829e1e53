"""Compiling the ehost-device forwarder (`forwarder/ehost-device.c`) into a static binary.

`setup.py` runs this when netdp is installed: into the wheel for `pip
install .`, in place next to the source for `pip install -e .`, so
`install.py` finds the binary at `BINARY` either way. It needs only a C
compiler and a static libc (Debian: gcc and libc6-dev). Standard library
only: the build imports this file before any dependency is installed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "forwarder" / "ehost-device.c"
BINARY = SOURCE.with_suffix("")  # deviceplugin/cni/forwarder/ehost-device
# Where the binary lands below a build directory (setuptools' build_lib).
PACKAGE_PATH = Path("deviceplugin", "cni", "forwarder", BINARY.name)
# Static, small, stripped; libc only. Warnings are shown, not fatal: a newer
# compiler's new warning must not leave a user without a binary (the tests
# build with -Werror).
CFLAGS = ("-std=c11", "-static", "-Os", "-s", "-Wall", "-Wextra")
INSTALL_HINT = (
    "a C compiler and a static libc (Debian/Ubuntu: apt-get install gcc libc6-dev; "
    "Fedora/RHEL: dnf install gcc glibc-static), then install netdp again"
)


class BuildError(Exception):
    """The forwarder could not be compiled; the message says why and what to install."""


def find_compiler() -> list[str] | None:
    """`$CC` (may carry flags), else `cc` or `gcc` on PATH; None without one."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def compile_forwarder(output: Path, extra_flags: tuple[str, ...] = ()) -> Path:
    """Build the binary at `output`, replacing any old one only once the new one is whole."""
    cc = find_compiler()
    if cc is None:
        raise BuildError(f"no C compiler (cc, gcc or $CC) for ehost-device: install {INSTALL_HINT}")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    command = [*cc, *CFLAGS, *extra_flags, "-o", str(tmp), str(SOURCE)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(
                f"{shlex.join(command)} failed ({proc.stderr.strip()[-2000:]}); "
                f"building ehost-device needs {INSTALL_HINT}"
            )
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def ensure_in_place(extra_flags: tuple[str, ...] = ()) -> Path:
    """`BINARY` of a source checkout, rebuilt when the C source is newer.

    For tests and benchmarks, which run the checkout: an edit of the C file
    takes effect without reinstalling netdp.
    """
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        compile_forwarder(BINARY, extra_flags)
    return BINARY
