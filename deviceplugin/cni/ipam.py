"""Delegating to the IPAM plugin the way libcni's `invoke` package does.

The plugin is found by name in CNI_PATH, gets the caller's environment with
CNI_COMMAND replaced, and the network config unchanged on stdin. Its answer is
a result or an error object; an error keeps the IPAM plugin's own message so
the runtime sees why, e.g., the range is exhausted. `PluginIpam` is the real
IPAM port (`ports.Ipam`) the executor hands the rules.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import structlog

from deviceplugin.cni.types import ERR_IPAM, CniError, CniRequest

log = structlog.get_logger(__name__)

IPAM_TIMEOUT_S = 60.0
# Plugins that hand out addresses from files or config and never touch the
# interface; only these may run while the NIC is still on its way into the pod.
DETACHED_PLUGINS = frozenset({"host-local", "static", "whereabouts"})


def find_plugin(name: str, cni_path: tuple[str, ...]) -> Path:
    for directory in cni_path:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(ERR_IPAM, f"IPAM plugin {name!r} not found", f"CNI_PATH={':'.join(cni_path)}")


def plugin_env(request: CniRequest, command: str) -> dict[str, str]:
    """The environment libcni gives a delegated plugin: the CNI_* set of this call."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": request.container_id,
        "CNI_NETNS": request.netns,
        "CNI_IFNAME": request.ifname,
        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in request.args.items()),
        "CNI_PATH": ":".join(request.cni_path),
    }
    env["PATH"] = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def _error_from(stdout: bytes, name: str, command: str, returncode: int) -> CniError:
    try:
        doc = json.loads(stdout)
        msg, details = str(doc.get("msg", "")), str(doc.get("details", ""))
    except (ValueError, AttributeError):
        msg, details = stdout.decode(errors="replace").strip(), ""
    return CniError(
        ERR_IPAM, f"IPAM {name} {command} failed: {msg or f'exit {returncode}'}", details
    )


class Call:
    """One running IPAM plugin process; `finish()` collects its answer.

    Started before the netns move for plugins that never touch the interface,
    so the plugin's exec and the kernel's move overlap.
    """

    def __init__(self, request: CniRequest, command: str, stdin: bytes | None = None) -> None:
        assert request.ipam_type is not None
        self.name, self.command = request.ipam_type, command
        self._outcome: bytes | CniError | None = None
        plugin = find_plugin(request.ipam_type, request.cni_path)
        read_end, write_end = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [str(plugin)],
                stdin=read_end,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=plugin_env(request, command),
            )
        except OSError as exc:
            os.close(write_end)
            raise CniError(ERR_IPAM, f"IPAM {self.name} {command} did not run", str(exc)) from None
        finally:
            os.close(read_end)
        try:
            with open(write_end, "wb") as pipe:
                pipe.write(request.raw_config if stdin is None else stdin)
        except BrokenPipeError:
            pass  # the plugin exited without reading; its answer says why

    def finish(self) -> bytes:
        """The plugin's stdout on success, `CniError` otherwise; the same on every call."""
        if self._outcome is None:
            try:
                self._outcome = self._collect()
            except CniError as exc:
                self._outcome = exc
        if isinstance(self._outcome, CniError):
            raise self._outcome
        return self._outcome

    def _collect(self) -> bytes:
        try:
            stdout, _ = self.proc.communicate(timeout=IPAM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise CniError(ERR_IPAM, f"IPAM {self.name} {self.command} timed out") from None
        if self.proc.returncode != 0:
            raise _error_from(stdout, self.name, self.command, self.proc.returncode)
        return stdout


class PluginIpam:
    """The IPAM port (`ports.Ipam`) on real plugins found in CNI_PATH."""

    def detached(self, plugin: str) -> bool:
        return plugin in DETACHED_PLUGINS

    def start(self, request: CniRequest, command: str) -> Call:
        return Call(request, command)

    def invoke(self, request: CniRequest, command: str) -> bytes:
        """Run the IPAM plugin to completion."""
        return Call(request, command).finish()

    def find(self, request: CniRequest) -> None:
        assert request.ipam_type is not None
        find_plugin(request.ipam_type, request.cni_path)

    def supports(self, request: CniRequest, version: str) -> bool:
        """Whether the plugin speaks `version` (asked before delegating 1.1-only commands)."""
        stdin = json.dumps({"cniVersion": version}).encode()
        try:
            out = Call(request, "VERSION", stdin).finish()
            return version in json.loads(out).get("supportedVersions", [])
        except (CniError, ValueError, AttributeError) as exc:
            log.info("ipam_version_unknown", plugin=request.ipam_type, error=str(exc))
            return False
