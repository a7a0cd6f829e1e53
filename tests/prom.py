"""Debian's Prometheus for the tests: `promtool`, and a server that lives only as long as a test.

The server listens on a loopback address the test names, keeps its TSDB in
the test's temp dir and is stopped (then killed, if it must be) on the way
out, even when the test fails. Nothing here enables or touches the system
service the package ships.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import in_netns

INSTALL_HINT = "apt-get install prometheus (scripts/test.sh does it)"
# Loopback only: never through a proxy the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def binary(name: str) -> str:
    """`prometheus` or `promtool` from PATH, or a failure that says what to install."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found on PATH: {INSTALL_HINT}")
    return found


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


class PrometheusServer:
    """A running `prometheus` and a client for its HTTP API (from inside `netns`, if set)."""

    def __init__(
        self, proc: subprocess.Popen[str], url: str, log: Path, netns: str | None = None
    ) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        self.netns = netns

    def fetch(self, path: str) -> bytes:
        with (
            in_netns(self.netns) if self.netns else nullcontext(),
            _OPENER.open(f"{self.url}{path}", timeout=10) as reply,
        ):
            return reply.read()

    def get(self, path: str, **params: str) -> Any:
        """A JSON API answer's `data`; fails on an API error."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        doc = json.loads(self.fetch(path + query))
        assert doc["status"] == "success", doc
        return doc["data"]

    def wait_ready(self, timeout: float = 60) -> None:
        """Until /-/ready answers: the TSDB is open and rules are loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log_tail()}")
            try:
                self.fetch("/-/ready")
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"prometheus not ready in {timeout}s:\n{self.log_tail()}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": labels, "value": [ts, "v"]}, ...]."""
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return data["result"]

    def wait_for(
        self,
        promql: str,
        check: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 60,
        what: str = "",
    ) -> list[dict[str, Any]]:
        """Poll an instant query until `check` accepts its result."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if check(result):
                return result
            if self.proc.poll() is not None:
                break
            time.sleep(0.25)
        raise AssertionError(
            f"{what or promql}: not reached in {timeout}s; last answer {result}\n"
            f"prometheus log:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def values(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    """An instant vector as {value of `label`: sample value}."""
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


@contextmanager
def prometheus(
    workdir: Path,
    targets: Sequence[str],
    listen: str,
    rule_files: Sequence[Path] = (),
    labels: dict[str, str] | None = None,
    netns: str | None = None,
    interval: str = "1s",
) -> Iterator[PrometheusServer]:
    """Prometheus scraping `targets` as job `netdp`, evaluating `rule_files`, on `listen`.

    With `netns`, the server runs inside that namespace (next to a daemon in a
    test namespace) and the client asks it from there. Returns once it is ready.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": "netdp",
                "static_configs": [{"targets": list(targets), "labels": labels or {}}],
            }
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    check = promtool("check", "config", str(config_file))
    assert check.returncode == 0, check.stdout + check.stderr
    log = workdir / "prometheus.log"
    command = [
        *(["ip", "netns", "exec", netns] if netns else []),
        binary("prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={listen}",
    ]
    # Proxies from the environment must not catch the loopback scrapes.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=workdir, env=env
        )
    server = PrometheusServer(proc, f"http://{listen}", log, netns)
    try:
        server.wait_ready()
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rule_file_alerts(path: Path) -> list[dict[str, Any]]:
    """Every alerting rule of a Prometheus rules file, in order."""
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]
