"""Regenerate (or check) the committed Python modules for netdp's .proto files.

The generated code is committed so that `pip install .` needs no protoc. The
price is that it can go stale; `--check` (used by tests/test_proto.py) catches
that by generating into a scratch directory and comparing byte for byte.

Protoc sees the files under the virtual path `deviceplugin/api/`, so the
generated gRPC modules import their message modules package-qualified
(`from deviceplugin.api.v1beta1 import api_pb2`) without any post-editing.

Usage: python scripts/gen_proto.py [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
# Virtual prefix under which protoc sees PROTO_ROOT; it is also where the output lands.
PACKAGE_PREFIX = "deviceplugin/api"
# .proto files relative to PROTO_ROOT.
PROTO_FILES = ("v1beta1/api.proto", "podresources/v1/api.proto")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_files() -> list[str]:
    """Repo-relative paths of every file this script owns."""
    files = []
    for proto in PROTO_FILES:
        stem = f"{PACKAGE_PREFIX}/{proto.removesuffix('.proto')}"
        files.extend(stem + suffix for suffix in GENERATED_SUFFIXES)
    return files


def generate(out_root: Path, proto_root: Path = PROTO_ROOT) -> None:
    """Run grpcio-tools' bundled protoc, writing under `out_root/deviceplugin/api/`."""
    # Imported here so that --help works without grpcio-tools installed.
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE_PREFIX}={proto_root}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{PACKAGE_PREFIX}/{proto}" for proto in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def stale_files(repo_root: Path = REPO_ROOT, proto_root: Path = PROTO_ROOT) -> list[str]:
    """Generated files under `repo_root` that differ from a fresh generation (or are missing)."""
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch), proto_root)
        return [
            rel
            for rel in generated_files()
            if not (repo_root / rel).is_file()
            or not filecmp.cmp(Path(scratch) / rel, repo_root / rel, shallow=False)
        ]


def write(repo_root: Path = REPO_ROOT, proto_root: Path = PROTO_ROOT) -> list[str]:
    """Regenerate into `repo_root`, returning the files whose content changed."""
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch), proto_root)
        changed = []
        for rel in generated_files():
            source, target = Path(scratch) / rel, repo_root / rel
            if target.is_file() and filecmp.cmp(source, target, shallow=False):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            changed.append(rel)
        return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with a fresh generation, write nothing"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for rel in stale:
            print(f"stale: {rel}", file=sys.stderr)
        if stale:
            print("run: python scripts/gen_proto.py", file=sys.stderr)
        return 1 if stale else 0
    for rel in write():
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
