"""Installing the `ehost-device` shim into a CNI bin directory.

The runtime executes the file directly, so its shebang must name an
interpreter that exists on the node. A pyenv or virtualenv shim in that line
would add a shell script and a second interpreter start to every call, or
break outright outside the environment, so the path is resolved to the real
binary. The node needs a `python3` (3.10 or newer); the shim itself uses only
the standard library.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from deviceplugin.cni import shim

PLUGIN_NAME = "ehost-device"
_PLACEHOLDER = "PACKAGE_PATH: str | None = None"
# Not interpreters: wrappers that re-exec one (pyenv shims are shell scripts).
_WRAPPER_MARKERS = ("/shims/", "/.pyenv/shims")


def real_interpreter(python: str | None = None) -> str:
    """The interpreter path for the shebang; wrapper scripts are refused.

    Without `python`: this process's interpreter, symlinks resolved, except in
    a virtualenv, whose packages only the venv's own `bin/python` link sees
    (the in-process fallback needs them). With it: the path as given (an init
    container installing for the node names the node's interpreter, whose
    symlinks may resolve differently here), checked to be a binary when it
    exists here.
    """
    if python is None and sys.prefix != sys.base_prefix:
        candidate = sys.executable
    elif python is None:
        candidate = os.path.realpath(sys.executable or "/usr/bin/python3")
    elif os.sep not in python:
        found = shutil.which(python)
        if found is None:
            raise FileNotFoundError(f"no interpreter {python!r} on PATH")
        candidate = found
    else:
        candidate = python
    if not os.path.isabs(candidate):
        raise ValueError(f"interpreter path {candidate!r} must be absolute")
    resolved = os.path.realpath(candidate)
    wrapper = any(m in resolved for m in _WRAPPER_MARKERS)
    if wrapper or (os.path.exists(resolved) and not _is_binary(resolved)):
        raise ValueError(f"{candidate} is a wrapper script, not an interpreter; pass a real one")
    return candidate


def _is_binary(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def shim_source(python: str, package_path: str | None) -> str:
    """The shim's text with its shebang and the package location filled in."""
    source = Path(shim.__file__).read_text()
    if _PLACEHOLDER not in source:
        raise RuntimeError("shim source lost its PACKAGE_PATH placeholder")
    source = source.replace(_PLACEHOLDER, f"PACKAGE_PATH: str | None = {package_path!r}", 1)
    return f"#!{python} -SE\n" + source


def install_shim(dest: Path, python: str | None = None) -> Path:
    """Write `dest/ehost-device` atomically (a runtime may be executing the old one)."""
    interpreter = real_interpreter(python)
    package_path = str(Path(shim.__file__).resolve().parents[2])
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / PLUGIN_NAME
    tmp = dest / f".{PLUGIN_NAME}.tmp{os.getpid()}"
    tmp.write_text(shim_source(interpreter, package_path))
    tmp.chmod(0o755)
    os.replace(tmp, target)
    return target
