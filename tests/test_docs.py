"""docs/ against the code: every command runs, every table matches.

Conventions (also stated in docs/README.md):

- A fenced `sh` block is run here, in order with the other blocks of its
  file, in one scratch directory per file, inside a network namespace of its
  own whose `eth0` carries the default route, with `NETDP_SYSFS_ROOT`
  pointing at a simulated lab VM (the default-route virtio NIC 0000:00:03.0
  as eth0 and three more virtio NICs, eth1..eth3). It must exit 0.
- An `sh` block whose first line is `# needs a cluster` or `# on a node` is
  not run; it must still be valid shell, and its `netdp` commands must parse.
- A `text` block right after an `<!-- output -->` line is the output
  (stdout and stderr) of the `sh` block before it. `...` matches anything
  within a line; a line that is only `...` matches any number of lines.
- Tables of config keys, CLI flags and metrics are compared with
  `config_keys()`, the argparse parser and `metric_reference()`; log event
  names and `netdp_*` metric names anywhere in the docs must exist in the code.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deviceplugin.cli import build_parser
from deviceplugin.config import config_keys
from deviceplugin.metrics import metric_reference
from deviceplugin.sim.fakesysfs import tmpfs_tempdir, virtio_lab

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))
LANGUAGES = {"sh", "text", "yaml", "json", "promql", "mermaid"}
NOT_RUN = ("# needs a cluster", "# on a node")
OUTPUT_MARKER = "<!-- output -->"
BLOCK_TIMEOUT_S = 60

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    is_output: bool  # preceded by OUTPUT_MARKER

    @property
    def runnable(self) -> bool:
        return self.lang == "sh" and not self.text.startswith(NOT_RUN)

    def __str__(self) -> str:
        return f"{self.file.name}:{self.line}"


def blocks(path: Path) -> list[Block]:
    out = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        start, lang = i, lines[i][3:].strip()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        body = "\n".join(lines[start + 1 : end]) + "\n"
        out.append(Block(path, start + 1, lang, body, before.strip() == OUTPUT_MARKER))
        i = end + 1
    return out


def tables(path: Path) -> dict[tuple[str, ...], list[tuple[str, ...]]]:
    """Every markdown table of a file: header cells -> rows of cells."""
    found: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or i + 1 >= len(lines) or not lines[i + 1].startswith("|--"):
            continue
        if i and lines[i - 1].startswith("|"):
            continue
        header = _cells(line)
        rows = found.setdefault(header, [])
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            rows.append(_cells(row))
    return found


def _cells(line: str) -> tuple[str, ...]:
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return tuple(p.strip().replace("\\|", "|") for p in parts)


def unquote(cell: str) -> str:
    return cell[1:-1] if len(cell) > 1 and cell[0] == cell[-1] == "`" else cell


# ---------------------------------------------------------------------------
# Blocks.


def all_blocks() -> list[Block]:
    return [b for path in DOC_FILES for b in blocks(path)]


def test_docs_exist() -> None:
    names = {p.name for p in DOC_FILES}
    assert {
        "architecture.md",
        "configuration.md",
        "operations.md",
        "troubleshooting.md",
    } <= names


@pytest.mark.parametrize("block", all_blocks(), ids=str)
def test_fence_is_known_and_commands_are_marked(block: Block) -> None:
    assert block.lang in LANGUAGES, f"{block}: fence ```{block.lang}; use sh or one of {LANGUAGES}"
    if block.lang == "text":
        prompts = [line for line in block.text.splitlines() if line.startswith(("$ ", "# "))]
        assert not prompts, f"{block}: commands belong in an sh block: {prompts}"
    if block.is_output:
        assert block.lang == "text", f"{block}: output blocks are ```text"


def output_pairs(path: Path) -> list[tuple[Block, Block | None]]:
    """Each runnable block with the output block that follows it, if any."""
    items = blocks(path)
    pairs: list[tuple[Block, Block | None]] = []
    for i, block in enumerate(items):
        if block.is_output:
            assert i and items[i - 1].runnable, f"{block}: output must follow a run sh block"
        if block.runnable:
            follow = items[i + 1] if i + 1 < len(items) and items[i + 1].is_output else None
            pairs.append((block, follow))
    return pairs


def netdp_commands(script: str) -> Iterator[list[str]]:
    """The argument lists of `netdp ...` invocations in a script (as written)."""
    joined = script.replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"\|\||&&|\||;|\$\(", line):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            while words and ("=" in words[0] or words[0] in ("--", "!", "exec", "sudo")):
                words = words[1:]
            if "--" in words and "netdp" in words[words.index("--") :]:
                words = words[words.index("--") + 1 :]
            if words and words[0] == "netdp":
                yield [w for w in words[1:] if not w.startswith(("2>", ">"))]


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.lang == "sh"], ids=str)
def test_shell_blocks_parse(block: Block) -> None:
    result = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    assert result.returncode == 0, f"{block}: {result.stderr}"
    parser = build_parser()
    for args in netdp_commands(block.text):
        if args in (["--version"], ["--help"]):
            continue
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{block}: `netdp {shlex.join(args)}` does not parse")


@pytest.fixture(scope="module")
def lab_sysfs() -> Iterator[Path]:
    with tmpfs_tempdir("netdp-docs-") as root:
        virtio_lab(root / "sys", 3, primary_netdev="eth0")
        yield root / "sys"


# Each block gets fresh network, mount and PID namespaces: a private /run (netns,
# the daemon's socket dir) and /opt (a CNI bin dir with ehost-device and Debian's
# reference plugins), and the lab's uplink eth0 carrying a default route. All of
# it, a daemon started in it included, vanishes with the block's shell; nothing
# on the host changes.
_SANDBOX = """\
mount --make-rprivate /
mount -t tmpfs netdp-docs /run
mount -t tmpfs netdp-docs /opt
mkdir -p /opt/cni/bin
ln -s /usr/lib/cni/* /opt/cni/bin/
netdp install-cni --dest /opt/cni/bin > /dev/null
ip link set lo up
ip link add eth0 type veth peer name eth0-peer
ip link set eth0 up
ip link set eth0-peer up
ip addr add 192.0.2.10/24 dev eth0
ip route add default via 192.0.2.1 dev eth0
"""
# For blocks that call ehost-device: the daemon that serves it, as on a node.
_CNI_DAEMON = """\
netdp run --device-plugin-path /run/device-plugins --devinfo-dir '' --metrics-address 0 \\
  > /run/netdp-run.log 2>&1 &
for _ in $(seq 600); do [ -S /run/netdp/cni.sock ] && break; sleep 0.05; done
[ -S /run/netdp/cni.sock ] || { cat /run/netdp-run.log; exit 1; }
"""


def run_block(block: Block, cwd: Path, sysfs: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETDP_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NETDP_SYSFS_ROOT"] = str(sysfs)
    daemon = _CNI_DAEMON if "ehost-device" in block.text else ""
    script = f"set -euo pipefail\n{_SANDBOX}{daemon}{block.text}"
    return subprocess.run(
        ["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "bash", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # interleaved as on a terminal
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )


def output_pattern(expected: str) -> re.Pattern[str]:
    parts = []
    for line in expected.splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[^\n]*".join(map(re.escape, line.rstrip().split("..."))) + r"\n")
    return re.compile("".join(parts))


def normalise(output: str) -> str:
    return "".join(line.rstrip() + "\n" for line in output.splitlines())


@needs_root
@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_sh_blocks_run(path: Path, lab_sysfs: Path, tmp_path: Path, forwarder: Path) -> None:
    for block, expected in output_pairs(path):
        result = run_block(block, tmp_path, lab_sysfs)
        output = normalise(result.stdout)
        assert result.returncode == 0, f"{block} exited {result.returncode}:\n{output}"
        if expected is not None:
            assert output_pattern(expected.text).fullmatch(output), (
                f"{block}: output differs from {expected}:\n{output}"
            )


def test_output_pattern() -> None:
    pattern = output_pattern("a ... b\n...\nend\n")
    assert pattern.fullmatch("a xx b\nend\n")
    assert pattern.fullmatch("a  b\n1\n2\nend\n")
    assert not pattern.fullmatch("a b\nend\n")
    assert not pattern.fullmatch("a x b\nnot the end\n")


# ---------------------------------------------------------------------------
# configuration.md


def test_config_key_table_is_config_keys() -> None:
    rows = tables(DOCS / "configuration.md")[("key", "type", "default", "support", "meaning")]
    documented = [(unquote(k), t, unquote(d), s, m) for k, t, d, s, m in rows]
    expected = [(k.path, k.type, k.default, k.support.value, k.description) for k in config_keys()]
    assert documented == expected


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                nested = list(subcommands(sub, path))
                yield from nested or [(path, sub)]


def documented_default(value: object) -> str:
    if value is None:
        return "none"
    if value is False:
        return "off"
    return f"`{value}`"


@contextlib.contextmanager
def clean_env() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("NETDP_")}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def cli_options() -> dict[tuple[str, str], tuple[str, str]]:
    """(command, --flag) -> (env cell, default cell), as the docs should show them."""
    with clean_env():
        plain = dict(subcommands(build_parser()))
        out = {}
        for command, sub in plain.items():
            for action in sub._actions:
                flags = [o for o in action.option_strings if o.startswith("--")]
                if not flags or flags[0] == "--help":
                    continue
                flag = flags[0]
                env = "NETDP_" + flag[2:].upper().replace("-", "_")
                os.environ[env] = "sentinel-from-env"
                try:
                    reads_env = any(
                        a.dest == action.dest and a.default == "sentinel-from-env"
                        for a in dict(subcommands(build_parser()))[command]._actions
                    )
                finally:
                    del os.environ[env]
                out[(command, flag)] = (
                    f"`{env}`" if reads_env else "-",
                    documented_default(action.default),
                )
        return out


def documented_options() -> dict[tuple[str, str], tuple[str, str]]:
    rows = tables(DOCS / "configuration.md")[("command", "flag", "env", "default", "meaning")]
    return {(unquote(c), unquote(f)): (e, d) for c, f, e, d, _ in rows}


def test_every_cli_option_is_documented_with_its_env_and_default() -> None:
    documented = documented_options()
    for key, value in cli_options().items():
        assert key in documented, f"netdp {key[0]} {key[1]} is not in configuration.md"
        assert documented[key] == value, f"netdp {key[0]} {key[1]}"


def test_every_documented_option_exists() -> None:
    missing = sorted(set(documented_options()) - set(cli_options()))
    assert not missing, f"documented but not in the CLI: {missing}"


# ---------------------------------------------------------------------------
# operations.md and names used anywhere.


def test_metric_table_is_metric_reference() -> None:
    rows = tables(DOCS / "operations.md")[("metric", "type", "labels", "meaning")]
    documented = [(unquote(n), t, lab, m) for n, t, lab, m in rows]
    expected = [
        (m.name, m.kind, ", ".join(f"`{label}`" for label in m.labels) or "-", m.help)
        for m in metric_reference()
    ]
    assert documented == expected


def test_alert_table_is_the_rules_file() -> None:
    rules = REPO / "daemonset" / "components" / "monitoring" / "netdp.rules.yaml"
    group = yaml.safe_load(rules.read_text())["groups"][0]["rules"]
    expected = [
        (
            r["alert"],
            r["labels"]["severity"],
            r.get("for", "-"),
            " ".join(line.strip() for line in r["expr"].splitlines()),
        )
        for r in group
        if "alert" in r
    ]
    rows = tables(DOCS / "operations.md")[("alert", "severity", "for", "expression")]
    assert [(unquote(a), s, f, unquote(e)) for a, s, f, e in rows] == expected


def known_series() -> set[str]:
    names = set()
    for m in metric_reference():
        names.add(m.name)
        if m.kind == "histogram":
            names |= {f"{m.name}_bucket", f"{m.name}_sum", f"{m.name}_count"}
    return names


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_metric_names_in_docs_exist(path: Path) -> None:
    used = set(re.findall(r"\bnetdp_[a-z0-9_]*[a-z0-9]\b", path.read_text()))
    assert used <= known_series(), f"unknown metrics: {sorted(used - known_series())}"


def code_strings() -> set[str]:
    found = set()
    for source in (REPO / "deviceplugin").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


EVENT = re.compile(r'"event": ?"([a-z_]+)"')


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_log_events_in_docs_exist(path: Path) -> None:
    text = path.read_text()
    events = set(EVENT.findall(text))
    for header, rows in tables(path).items():
        if header and header[0] == "event":
            events |= {name for row in rows for name in re.findall(r"`([a-z_]+)`", row[0])}
    missing = sorted(events - code_strings())
    assert not missing, f"log events not in the code: {missing}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_repo_paths_in_docs_exist(path: Path) -> None:
    text = path.read_text()
    for ref in set(re.findall(r"`((?:deviceplugin|daemonset|docs|tests|scripts)/[^` ]*)`", text)):
        assert (REPO / ref.rstrip("/")).exists(), f"{ref} does not exist"


def test_architecture_has_a_diagram() -> None:
    langs = [b.lang for b in blocks(DOCS / "architecture.md")]
    assert "mermaid" in langs


def test_architecture_names_every_module() -> None:
    text = (DOCS / "architecture.md").read_text()
    package = REPO / "deviceplugin"
    modules = [p for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")]
    subpackages = [p for p in package.iterdir() if (p / "__init__.py").exists()]
    for path in modules:
        assert f"`deviceplugin/{path.name}`" in text, f"{path.name} is not described"
    for path in subpackages:
        assert f"`deviceplugin/{path.name}/`" in text, f"{path.name}/ is not described"


def test_netdp_commands_are_found_in_scripts() -> None:
    script = (
        "kubectl -n netdp exec ds/netdp -- netdp list --json | python3 -m json.tool\n"
        "NETDP_SYSFS_ROOT=/x netdp config check f.yaml || echo failed  # a comment\n"
        "netdp run \\\n  --log-level debug 2>&1\n"
    )
    assert list(netdp_commands(script)) == [
        ["list", "--json"],
        ["config", "check", "f.yaml"],
        ["run", "--log-level", "debug"],
    ]
