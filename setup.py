"""The one build step pyproject.toml cannot declare: compile the ehost-device forwarder.

`build_forwarder` runs as part of `build`: into the wheel for `pip install .`,
in place next to its source for `pip install -e .` (setuptools sets
`editable_mode`). Without a C compiler the install still succeeds, without
the binary; `netdp install-cni` then says how to get one.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import ClassVar

from setuptools import Command, Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build import build

_spec = importlib.util.spec_from_file_location(
    "forwarder_build", Path(__file__).resolve().parent / "deviceplugin/cni/forwarder_build.py"
)
assert _spec is not None and _spec.loader is not None
forwarder_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forwarder_build)


class BuildForwarder(Command):
    """Compile deviceplugin/cni/forwarder/ehost-device.c into a static binary."""

    description = "compile the static ehost-device CNI forwarder"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.editable_mode = False

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def _target(self) -> Path:
        if self.editable_mode:
            return forwarder_build.BINARY
        assert self.build_lib is not None
        return Path(self.build_lib) / forwarder_build.PACKAGE_PATH

    def run(self) -> None:
        try:
            built = forwarder_build.compile_forwarder(self._target())
        except forwarder_build.BuildError as exc:
            print(f"WARNING: netdp installs without ehost-device: {exc}", file=sys.stderr)
            return
        print(f"built {built}", file=sys.stderr)

    def get_outputs(self) -> list[str]:
        assert self.build_lib is not None
        return [str(Path(self.build_lib) / forwarder_build.PACKAGE_PATH)]

    def get_source_files(self) -> list[str]:
        return [str(forwarder_build.SOURCE.relative_to(Path(__file__).resolve().parent))]


class BinaryDistribution(Distribution):
    """It carries a native binary: built per platform, installed to platlib."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """For one platform, any Python 3: the binary does not link to Python."""

    def get_tag(self) -> tuple[str, str, str]:
        return "py3", "none", super().get_tag()[2]


build.sub_commands.append(("build_forwarder", None))
setup(
    distclass=BinaryDistribution,
    cmdclass={"build_forwarder": BuildForwarder, "bdist_wheel": PlatformWheel},
)
