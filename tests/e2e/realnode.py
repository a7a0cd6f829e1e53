"""The `kubelet` scenario: netdp and ehost-device on a standalone node with a real kubelet.

Runs in the guest (`guest.py kubelet`), in one vm-run VM with 3 spare virtio
NICs: containerd 1.6 (CRI, runc, the overlayfs snapshotter), a real kubelet
v1.20.2 from `../shared/lab/kubelet/` running static pods only (no API
server), and netdp installed the way `daemonset/daemonset.yaml` installs it:
the init container's `netdp install-cni` into containerd's CNI bin dir, then
the main container's `netdp run` with its environment and the ConfigMap's
config at the same paths. Pods run busybox; the one without hostNetwork gets
its NIC through containerd's own CNI call (`ehost-device` + `host-local`, no
Multus), so ehost-device finds the device through the kubelet's PodResources.

What the verdicts need is read from the kubelet and the runtime, never from
netdp: the kubelet's log (registrations), its device-manager checkpoint
(registered devices, allocations), `/pods` on its read-only port (phases,
admission refusals, pod IPs), PodResources v1 `List` on its socket, and the
pod's network namespace as containerd recorded it in the sandbox's spec.

The kubelet lab's README lists the pitfalls this set-up avoids (runtime flags
of 1.20, atomic static-pod manifests written only after registration, the
VM's default route, tmpfs roots, loopback in containerd's CNI bin dir).
Everything here is paced for TCG, where importing netdp's daemon takes ~25 s
of CPU and the kubelet ~25 s to open its sockets, on 2 vCPUs: the node's
daemons start before this process imports gRPC, `install-cni` runs in this
process (same code, same argv), `netdp list` at the lowest priority while
the node starts, and polls are unhurried.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml
from guest import UPLINK, Recorder, host_netdevs, ip_batch, run, uplink_commands, wait_for
from helpers import NETDP, DaemonProcess
from vmrig import REPO, realnode_dir

from deviceplugin import cli

VIRT = "kernel.org/virt"
NODE_NAME = "netdp-node"  # static pods are named <pod>-<node>
NAMESPACE = "default"
WORK = Path("/run/netdp-e2e")  # configs, logs while running, the pods' /out
KUBELET_ROOT = Path("/var/lib/kubelet")
PLUGIN_DIR = KUBELET_ROOT / "device-plugins"
KUBELET_SOCKET = PLUGIN_DIR / "kubelet.sock"
CHECKPOINT = PLUGIN_DIR / "kubelet_internal_checkpoint"
POD_RESOURCES = KUBELET_ROOT / "pod-resources" / "kubelet.sock"
MANIFESTS = Path("/etc/kubernetes/manifests")
CONTAINERD_SOCKET = Path("/run/containerd/containerd.sock")
CNI_BIN = Path("/opt/cni/bin")  # containerd's CNI bin_dir, as on a kubeadm node
CNI_CONF = Path("/etc/cni/net.d")
# Fresh, guest-only tmpfs at the node's usual paths: the host's / is shared
# read-only, and overlayfs cannot be the upper dir of containerd's snapshots.
TMPFS = (KUBELET_ROOT, Path("/var/lib/containerd"), CNI_BIN, CNI_CONF, MANIFESTS.parent,
         Path("/etc/netdp"), Path("/var/lib/cni"), WORK)  # fmt: skip
READ_ONLY_PORT = "http://127.0.0.1:10255"
PAUSE_IMAGE = "localhost/pause:3.4"
BUSYBOX_IMAGE = "localhost/busybox:1.35"
POD_SUBNET = "10.56.0.0/24"
REGISTRATION_LINE = re.compile(
    r"^I(?P<md>\d{4}) (?P<time>[\d:.]+) .*\] Got registration request from device plugin "
    r'with resource name "(?P<resource>[^"]+)"',
    re.MULTILINE,
)
VERSION_LINE = re.compile(r"\] Version: (v[\w.+-]+)$", re.MULTILINE)
# TCG: the kubelet needs ~25 s to open its sockets, a pod ~20 s to start.
KUBELET_UP_S = 180.0
POD_S = 150.0
POLL_S = 0.5  # each /pods read is work for the kubelet too
# A double registration comes within milliseconds; this much quiet proves there is none.
QUIET_AFTER_REGISTRATION_S = 3.0

CONTAINERD_CONFIG = f"""\
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "{CONTAINERD_SOCKET}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{CNI_CONF}"
"""

# Standalone: no kubeconfig, static pods only, the read-only port for /pods.
KUBELET_CONFIG = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "staticPodPath": str(MANIFESTS),
    "fileCheckFrequency": "5s",
    "cgroupDriver": "cgroupfs",
    "failSwapOn": False,
    "address": "127.0.0.1",
    "healthzBindAddress": "127.0.0.1",
    "readOnlyPort": 10255,
    "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
    "authorization": {"mode": "AlwaysAllow"},
    # Less periodic work under TCG: no volume du, rarer node status and container stats.
    "volumeStatsAggPeriod": "0s",
    "nodeStatusUpdateFrequency": "60s",
    "nodeStatusReportFrequency": "60s",
    "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                     "imagefs.available": "1%"},
}  # fmt: skip

# containerd calls the first network config in conf_dir for every non-hostNetwork pod.
CNI_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "netdp-virt",
    "plugins": [
        {
            "type": "ehost-device",
            "resourceName": VIRT,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]]},
        }
    ],
}


# ------------------------------------------------------------------ the deployment


@dataclass(frozen=True)
class Deployment:
    """What daemonset/ runs on a node: the init container, the daemon, its env and config."""

    install_cni: list[str]
    run: list[str]
    env: dict[str, str]
    config_path: Path
    config_text: str


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_deployment() -> Deployment:
    pod = load_yaml(REPO / "daemonset" / "daemonset.yaml")["spec"]["template"]
    spec = pod["spec"]
    init = next(c for c in spec["initContainers"] if c["name"] == "install-cni")
    main = next(c for c in spec["containers"] if c["name"] == "netdp")
    env = {e["name"]: str(e["value"]) for e in main.get("env", []) if "value" in e}
    configmap = load_yaml(REPO / "daemonset" / "configmap.yaml")
    mount = next(m for m in main["volumeMounts"] if m["name"] == "config")["mountPath"]
    (name, text), *_ = configmap["data"].items()
    return Deployment(
        install_cni=[*init["command"], *init.get("args", [])],
        run=[*main["command"], *main.get("args", [])],
        env=env,
        config_path=Path(mount) / name,
        config_text=text,
    )


def netdp_args(command: list[str], subcommand: str) -> list[str]:
    """The arguments after `netdp <subcommand>` in a DaemonSet command."""
    if command[:2] != ["netdp", subcommand]:
        raise ValueError(f"the DaemonSet runs {command}, not netdp {subcommand}")
    return command[2:]


def with_dest(command: list[str], dest: Path) -> list[str]:
    """The init container's command, installing into `dest` (containerd's CNI bin dir)."""
    out = list(command)
    out[out.index("--dest") + 1] = str(dest)
    return out


def netdp_in_process(argv: list[str]) -> tuple[int, str]:
    """`netdp ARGV` run by this process (its imports are paid already); exit code, stdout."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(argv)
    return code, stdout.getvalue()


# ------------------------------------------------------------------ files and processes


def write_atomically(path: Path, text: str) -> None:
    """A dotfile in the same directory, then rename: the kubelet skips dotfiles and
    would otherwise read a half-written static-pod manifest once, and only once."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.rename(path)


def mount_tmpfs(paths: tuple[Path, ...]) -> None:
    run("sh", "-c", "".join(f"mkdir -p {p} && mount -t tmpfs tmpfs {p} && " for p in paths) + ":")


@dataclass
class Service:
    """A node daemon (containerd, the kubelet) whose output goes to a log file."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: TextIO | None = None
    _scanned: int = 0  # bytes of the log already searched for registrations
    _registrations: list[float] = field(default_factory=list)

    def start(self) -> None:
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (what systemd sends on restart), SIGKILL if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def registrations(self, resource: str = VIRT) -> list[float]:
        """When this kubelet logged a Register call for `resource` (epoch s, from klog's
        local time). Reads only what was logged since the last call: polled under TCG."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(self._scanned)
            text = f.read()
        complete = text[: text.rfind(b"\n") + 1]
        self._scanned += len(complete)
        year = datetime.now().year
        self._registrations += [
            datetime.strptime(f"{year}{m['md']} {m['time']}", "%Y%m%d %H:%M:%S.%f").timestamp()
            for m in REGISTRATION_LINE.finditer(complete.decode(errors="replace"))
            if m["resource"] == resource
        ]
        return list(self._registrations)


def containerd_service() -> Service:
    argv = ["containerd", "--config", str(WORK / "containerd.toml")]
    return Service("containerd", argv, WORK / "containerd.log")


def kubelet_service(instance: int) -> Service:
    argv = [
        str(realnode_dir() / "bin" / "kubelet"),
        f"--config={WORK / 'kubelet.yaml'}",
        # 1.20: the runtime endpoint is a flag pair, not a config field.
        "--container-runtime=remote",
        f"--container-runtime-endpoint=unix://{CONTAINERD_SOCKET}",
        f"--pod-infra-container-image={PAUSE_IMAGE}",
        f"--root-dir={KUBELET_ROOT}",
        f"--hostname-override={NODE_NAME}",
        "--housekeeping-interval=30s",
        "--v=2",
    ]
    return Service(f"kubelet-{instance}", argv, WORK / f"kubelet-{instance}.log")


# ------------------------------------------------------------------ reading the kubelet


def read_checkpoint() -> dict[str, Any] | None:
    """The device manager's checkpoint: registered (healthy) devices and allocations."""
    from deviceplugin.api.v1beta1 import api_pb2  # protobuf: not before the node is up

    try:
        data = json.loads(CHECKPOINT.read_text())["Data"]
    except (OSError, ValueError, KeyError):
        return None
    entries = []
    for e in data.get("PodDeviceEntries") or []:
        ids = e.get("DeviceIDs") or {}  # 1.20: {NUMA node: [ids]}; before: [ids]
        flat = ids if isinstance(ids, list) else [i for v in ids.values() for i in v]
        # The plugin's Allocate answer as the kubelet keeps it: what the container gets.
        answer = api_pb2.ContainerAllocateResponse.FromString(base64.b64decode(e["AllocResp"]))
        entries.append({"pod_uid": e["PodUID"], "container": e["ContainerName"],
                        "resource": e["ResourceName"], "devices": sorted(flat),
                        "env": dict(answer.envs)})  # fmt: skip
    registered = {r: sorted(ids) for r, ids in (data.get("RegisteredDevices") or {}).items()}
    return {"registered": registered, "allocations": entries}


def pool_checkpoint(size: int, written_after: float = 0.0) -> dict[str, Any] | None:
    """The checkpoint once it registers `size` (healthy) kernel.org/virt devices, in a
    version the kubelet wrote after `written_after` (epoch s)."""
    try:
        if CHECKPOINT.stat().st_mtime <= written_after:
            return None
    except OSError:
        return None
    checkpoint = read_checkpoint()
    if checkpoint is None or len(checkpoint["registered"].get(VIRT, [])) != size:
        return None
    return checkpoint


def allocation_of(pod_uid: str) -> dict[str, Any] | None:
    """The pod's entry in the checkpoint, once there."""
    entries = (read_checkpoint() or {}).get("allocations", [])
    return next((e for e in entries if e["pod_uid"] == pod_uid), None)


def kubelet_pods() -> dict[str, dict[str, Any]]:
    """`/pods` on the read-only port, reduced to what the verdicts need, by pod name."""
    with urllib.request.urlopen(f"{READ_ONLY_PORT}/pods", timeout=10) as response:
        doc = json.load(response)
    pods = {}
    for pod in doc.get("items") or []:
        status = pod.get("status") or {}
        containers = [
            {"name": c["name"], "ready": c.get("ready"), "restarts": c.get("restartCount"),
             "state": sorted(c.get("state") or {}), "id": c.get("containerID")}
            for c in status.get("containerStatuses") or []
        ]  # fmt: skip
        pods[pod["metadata"]["name"]] = {
            "uid": pod["metadata"].get("uid"),
            "phase": status.get("phase"),
            "reason": status.get("reason"),
            "message": status.get("message"),
            "pod_ip": status.get("podIP"),
            "containers": containers,
        }
    return pods


def list_pod_resources() -> dict[str, dict[str, dict[str, list[str]]]]:
    """PodResources v1 List: pod -> container -> resource -> device ids."""
    reply = pod_resources_call("List")
    if reply["code"] != "OK":
        raise ConnectionError(f"PodResources List: {reply}")
    return {
        p["name"]: {
            c["name"]: {
                d["resourceName"]: sorted(d.get("deviceIds", [])) for d in c.get("devices", [])
            }
            for c in p.get("containers", [])
        }
        for p in reply["reply"].get("podResources", [])
        if p.get("namespace") == NAMESPACE
    }


def pod_resources_call(method: str, **request: str) -> dict[str, Any]:
    """One PodResources v1 call on the kubelet's socket: its status code and the reply."""
    import grpc  # here, not at the top: see the module's docstring
    from google.protobuf.json_format import MessageToDict

    from deviceplugin.api.podresources.v1 import api_pb2, api_pb2_grpc

    message = {
        "List": api_pb2.ListPodResourcesRequest,
        "Get": api_pb2.GetPodResourcesRequest,
        "GetAllocatableResources": api_pb2.AllocatableResourcesRequest,
    }[method](**request)
    with grpc.insecure_channel(f"unix:{POD_RESOURCES}") as channel:
        stub = api_pb2_grpc.PodResourcesListerStub(channel)
        try:
            reply = getattr(stub, method)(message, timeout=10)
        except grpc.RpcError as err:
            return {"code": err.code().name, "details": err.details()}
    return {"code": "OK", "reply": MessageToDict(reply)}


def pod_name(short: str) -> str:
    return f"{short}-{NODE_NAME}"


def poll(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    """`wait_for` at the kubelet's pace; a read failing while it (re)starts is a 'not yet'."""

    def tolerant() -> Any:
        try:
            return probe()
        except OSError:  # ConnectionError for PodResources too
            return None

    return wait_for(what, tolerant, timeout, interval=POLL_S)


# ------------------------------------------------------------------ the runtime's view of a pod


def nic_table() -> dict[str, dict[str, str]]:
    """Host netdev -> its PCI address and MAC (the MAC identifies it inside a pod)."""
    return {
        name: {"pci": pci, "mac": Path(f"/sys/class/net/{name}/address").read_text().strip()}
        for name, pci in host_netdevs().items()
    }


def sandbox_netns(pod: str) -> dict[str, Any]:
    """The pod's network namespace as containerd made it (the sandbox's OCI spec), and
    whether the sandbox's pause process lives in it."""
    ids = run(
        "ctr", "-n", "k8s.io", "containers", "ls", "-q",
        f'labels."io.kubernetes.pod.name"=={pod},labels."io.cri-containerd.kind"==sandbox',
    ).split()  # fmt: skip
    if len(ids) != 1:
        raise RuntimeError(f"containerd has {len(ids)} sandboxes for {pod}: {ids}")
    info = json.loads(run("ctr", "-n", "k8s.io", "containers", "info", ids[0]))
    path = next(n["path"] for n in info["Spec"]["linux"]["namespaces"] if n["type"] == "network")
    tasks = [line.split() for line in run("ctr", "-n", "k8s.io", "tasks", "ls").splitlines()[1:]]
    pid = next(int(t[1]) for t in tasks if t[0] == ids[0])
    same = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(path).st_ino
    return {"sandbox": ids[0], "path": path, "pause_pid": pid, "pause_in_it": same}


def links_in(netns_path: str, nics: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """Every link in the namespace: MAC, the host NIC it is (by MAC), IPv4 addresses."""
    doc = json.loads(run("nsenter", f"--net={netns_path}", "ip", "-d", "-j", "address", "show"))
    by_mac = {n["mac"]: (name, n["pci"]) for name, n in nics.items()}
    out = {}
    for link in doc:
        host_name, pci = by_mac.get(link.get("address", ""), (None, None))
        out[link["ifname"]] = {
            "mac": link.get("address"),
            "host_name": host_name,
            "pci": pci,
            "state": link.get("operstate"),
            "parentdev": link.get("parentdev"),
            "ipv4": [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                     if a["family"] == "inet"],
        }  # fmt: skip
    return out


# ------------------------------------------------------------------ pods


def pod_out(short: str) -> Path:
    return WORK / "pods" / short


def pod_manifest(short: str, virt: int, *, host_network: bool) -> dict[str, Any]:
    """A busybox pod that writes its environment and network view to /out, then waits."""
    script = (
        "env > /out/.env && mv /out/.env /out/env; "
        "{ ip -o addr; ls /sys/class/net; } > /out/.net && mv /out/.net /out/net; "
        "trap 'exit 0' TERM; sleep 100000 & wait"
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": short, "namespace": NAMESPACE},
        "spec": {
            "hostNetwork": host_network,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "resources": {"limits": {VIRT: str(virt)}},
                    "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                }
            ],
            "volumes": [
                {"name": "out", "hostPath": {"path": str(pod_out(short)), "type": "Directory"}}
            ],
        },
    }


def write_pod(short: str, virt: int, *, host_network: bool) -> None:
    pod_out(short).mkdir(parents=True, exist_ok=True)
    manifest = pod_manifest(short, virt, host_network=host_network)
    write_atomically(MANIFESTS / f"{short}.json", json.dumps(manifest, indent=1))


def delete_pod(short: str) -> None:
    (MANIFESTS / f"{short}.json").unlink()


def pcidevice_env(short: str) -> dict[str, str]:
    """The PCIDEVICE_* variables the container saw."""
    lines = (pod_out(short) / "env").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {k: v for k, v in pairs if k.startswith("PCIDEVICE_")}


def running(pods: Mapping[str, Mapping[str, Any]], short: str) -> bool:
    """Running, and its container has run its first commands (written /out)."""
    pod = pods.get(pod_name(short))
    wrote = (pod_out(short) / "env").exists() and (pod_out(short) / "net").exists()
    return bool(pod) and pod["phase"] == "Running" and wrote


def refused(pods: Mapping[str, Mapping[str, Any]], short: str) -> bool:
    pod = pods.get(pod_name(short))
    return bool(pod) and pod["phase"] == "Failed"


def pods_where(
    check: Callable[[dict[str, dict[str, Any]]], bool], what: str
) -> dict[str, dict[str, Any]]:
    """`/pods` once `check` holds for it (which may be when it is empty)."""

    def probe() -> tuple[dict[str, dict[str, Any]]] | None:
        pods = kubelet_pods()
        return (pods,) if check(pods) else None

    return poll(what, probe, POD_S)[0]


def holding_devices(*short_names: str) -> Callable[[], Any]:
    """A probe: the PodResources listing once every named pod has devices in it."""
    want = {pod_name(s) for s in short_names}

    def probe() -> dict[str, Any] | None:
        listing = list_pod_resources()
        holding = {p for p, containers in listing.items() if any(containers.values())}
        return listing if want <= holding else None

    return probe


# ------------------------------------------------------------------ the node


@dataclass
class RealNode:
    """containerd + kubelet + netdp on this guest; the kubelet and netdp restart on demand."""

    rec: Recorder
    deployment: Deployment
    containerd: Service = field(default_factory=containerd_service)
    kubelets: list[Service] = field(default_factory=list)
    daemons: list[DaemonProcess] = field(default_factory=list)

    @property
    def kubelet(self) -> Service:
        return self.kubelets[-1]

    @property
    def daemon(self) -> DaemonProcess:
        return self.daemons[-1]

    def start_kubelet(self) -> Service:
        kubelet = kubelet_service(len(self.kubelets) + 1)
        self.kubelets.append(kubelet)
        kubelet.start()
        self.rec.say("$ " + " ".join(kubelet.argv))
        return kubelet

    def start_daemon(self) -> DaemonProcess:
        """The DaemonSet's `netdp run`, with its container's environment.

        Plus debug logging, so the log shows what the registrar saw in the
        plugin directory.
        """
        args = netdp_args(self.deployment.run, "run")
        env = {**os.environ, **self.deployment.env, "NETDP_LOG_LEVEL": "debug"}
        daemon = DaemonProcess(args, isolated=False, env=env)
        self.daemons.append(daemon)
        shown = " ".join(f"{k}={v}" for k, v in self.deployment.env.items())
        self.rec.say(f"$ {shown} {' '.join(self.deployment.run)}")
        return daemon

    def daemon_registrations(self) -> list[float]:
        """When the current netdp logged a successful kernel.org/virt registration (epoch s)."""
        return [
            datetime.fromisoformat(e["timestamp"]).timestamp()
            for e in list(self.daemon.events)
            if e.get("event") == "registered" and e.get("resource") == VIRT
        ]

    def wait_registrations(self, count: int) -> None:
        """Until the current kubelet logged `count` Register calls for kernel.org/virt."""
        wait_for(
            f"{count} registration(s) in {self.kubelet.name}'s log",
            lambda: len(self.kubelet.registrations()) >= count or not self.kubelet.running(),
            KUBELET_UP_S,
            interval=POLL_S,
        )

    def settled_registrations(self) -> int:
        """The current kubelet's Register calls for kernel.org/virt, counted only once the
        last one is QUIET_AFTER_REGISTRATION_S old (a double one comes within ms)."""
        last = max(self.kubelet.registrations(), default=time.time())
        time.sleep(max(0.0, last + QUIET_AFTER_REGISTRATION_S - time.time()))
        return len(self.kubelet.registrations())

    def save_logs(self) -> None:
        """Every log into the shared dir, where the host shows their tails on failure."""
        for service in (self.containerd, *self.kubelets):
            if service.log_path.exists():
                (self.rec.out / f"{service.name}.log").write_text(service.log_text())
        for i, daemon in enumerate(self.daemons, 1):
            (self.rec.out / f"netdp-{i}.log").write_text(daemon.log_text() + "\n")


@contextmanager
def real_node(rec: Recorder, deployment: Deployment) -> Iterator[RealNode]:
    """The node's daemons, stopped on the way out, their logs kept."""
    node = RealNode(rec, deployment)
    try:
        yield node
    finally:
        try:
            for kubelet in node.kubelets:
                kubelet.stop()
            if node.daemons and node.daemon.proc.poll() is None:
                rec.fact("daemon_exit", node.daemon.stop(timeout=30)[0])
            for daemon in node.daemons:
                daemon.kill()
            node.containerd.stop()
        finally:
            node.save_logs()


def configure_node(deployment: Deployment) -> None:
    """Fresh tmpfs at the node's paths, the uplink, and every config file."""
    mount_tmpfs(TMPFS)
    ip_batch(uplink_commands())
    (WORK / "containerd.toml").write_text(CONTAINERD_CONFIG)
    (WORK / "kubelet.yaml").write_text(yaml.safe_dump(KUBELET_CONFIG))
    (CNI_CONF / "10-netdp.conflist").write_text(json.dumps(CNI_CONFLIST, indent=1))
    for plugin in ("loopback", "host-local"):  # containerd needs loopback beside ours
        (CNI_BIN / plugin).symlink_to(Path("/usr/lib/cni") / plugin)
    MANIFESTS.mkdir(parents=True)
    deployment.config_path.parent.mkdir(parents=True, exist_ok=True)
    deployment.config_path.write_text(deployment.config_text)


# ------------------------------------------------------------------ the scenario


def scenario_kubelet(rec: Recorder) -> None:
    """Issue 10's items 1-8 in one VM, in the order a node lives through them."""
    with rec.step("node set-up: tmpfs roots, uplink, containerd/kubelet/CNI/netdp configs"):
        deployment = read_deployment()
        configure_node(deployment)
        nics = rec.fact("nics_before", nic_table())
        home = rec.fact("host_netdevs_before", host_netdevs())
        rec.fact("uplink_pci", nics[UPLINK[0]]["pci"])
    spares = len(nics) - 1  # every PCI NIC but the uplink: what the pool should hold
    with real_node(rec, deployment) as node:
        listing = start_node(rec, node, spares)
        run_pods(rec, node, spares, nics)
        with rec.step("netdp list (it ran at the lowest priority meanwhile)"):
            shown = json.loads(listing.communicate(timeout=300)[0])
            pool = [d["pci"] for d in shown["devices"] if d["pool"] == VIRT]
            rec.fact("list_pool", sorted(pool))
            rec.fact("list_default_route", shown["default_route_interfaces"])
            rec.say(f"netdp list: {VIRT} = {sorted(pool)}")
        restart_kubelet(rec, node)
        restart_netdp(rec, node, spares)
        with rec.step("delete pod-cni: its NIC comes home; pod-two asks for 2, is given 2"):
            delete_pod("pod-cni")
            poll("pod-cni gone, its NIC home",
                 lambda: pod_name("pod-cni") not in kubelet_pods() and host_netdevs() == home,
                 POD_S)  # fmt: skip
            rec.fact("host_netdevs_after_pod_cni", host_netdevs())
            write_pod("pod-two", 2, host_network=True)
            # Admission allocates; the kubelet's records say what the container will get.
            listing = poll("pod-two's devices in PodResources", holding_devices("pod-two"), POD_S)
            rec.fact("podresources_with_pod_two", listing)
            uid = kubelet_pods()[pod_name("pod-two")]["uid"]
            entry = poll("pod-two in the checkpoint", lambda: allocation_of(uid), 60)
            rec.fact("pod_two_env", entry["env"])
        with rec.step("delete every pod: every NIC back under its own name"):
            for short in ("pod-host", "pod-big", "pod-two"):
                delete_pod(short)
            pods_where(lambda p: not p, "no pods left")
            rec.fact("host_netdevs_after", host_netdevs())
            rec.fact("podresources_after", list_pod_resources())


def start_node(rec: Recorder, node: RealNode, spares: int) -> subprocess.Popen[str]:
    """Items 1 and 2: containerd, the kubelet and netdp as deployed; `netdp list` started."""
    deployment = node.deployment
    with rec.step("containerd; install-cni as the DaemonSet's init container; netdp; kubelet"):
        node.containerd.start()
        install = with_dest(deployment.install_cni, CNI_BIN)
        code, output = netdp_in_process(["install-cni", *netdp_args(install, "install-cni")])
        rec.say(f"$ {' '.join(install)}\n{output}")
        shim = CNI_BIN / "ehost-device"
        rec.fact("install_cni", {"argv": install, "rc": code, "output": output,
                                 "executable": os.access(shim, os.X_OK)})  # fmt: skip
        node.start_daemon()
        wait_for("containerd's socket", CONTAINERD_SOCKET.exists, 60, interval=POLL_S)
        node.start_kubelet()
        # Needed only later, and under TCG its imports would slow the kubelet and netdp.
        config = ["--config", str(deployment.config_path)]
        listing = subprocess.Popen(["nice", "-n", "19", *NETDP, "list", "--json", *config],
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
    with rec.step("import the pause and busybox images into containerd"):
        for image in ("pause.tar", "busybox.tar"):
            tarball = realnode_dir() / "images" / image
            rec.say(run("ctr", "-n", "k8s.io", "images", "import", str(tarball)).strip())
    with rec.step("the kubelet logs netdp's registration; its checkpoint holds the capacity"):
        node.wait_registrations(1)
        record_latency(rec, node, "first_registration", 0)
        version = VERSION_LINE.search(node.kubelet.log_text())
        rec.fact("kubelet_version", version[1] if version else None)
        checkpoint = poll("the pool in the checkpoint", lambda: pool_checkpoint(spares), 60)
        rec.fact("capacity", checkpoint["registered"][VIRT])
        rec.say(f"kubelet checkpoint: {VIRT} = {checkpoint['registered'][VIRT]}")
    return listing


def record_latency(rec: Recorder, node: RealNode, key: str, skip: int) -> None:
    """netdp's registrations after its first `skip`, and how long after the current
    kubelet.sock appeared the first of them came."""
    created = KUBELET_SOCKET.stat().st_mtime
    with contextlib.suppress(TimeoutError):  # its log line may trail the kubelet's
        wait_for("netdp's log of it", lambda: len(node.daemon_registrations()) > skip, 10)
    times = node.daemon_registrations()[skip:]
    rec.fact(f"{key}_latency_s", round(times[0] - created, 3) if times else None)


def run_pods(rec: Recorder, node: RealNode, spares: int, nics: dict[str, Any]) -> None:
    """Items 3, 4 and the first half of 5."""
    from deviceplugin import podresources  # netdp's own client, as ehost-device uses it

    with rec.step("static pods: pod-host (hostNetwork, 1 NIC), pod-cni (CNI, 1), pod-big"):
        write_pod("pod-host", 1, host_network=True)
        write_pod("pod-cni", 1, host_network=False)
        write_pod("pod-big", spares + 1, host_network=True)
        # The first registration is long enough ago by now for a duplicate to have shown.
        rec.fact("kubelet_1_registrations", node.settled_registrations())
        pods = pods_where(
            lambda p: running(p, "pod-host") and running(p, "pod-cni") and refused(p, "pod-big"),
            "pod-host and pod-cni running, pod-big refused",
        )
        rec.fact("pods", pods)
        rec.say(json.dumps({k: (v["phase"], v["reason"], v["pod_ip"]) for k, v in pods.items()}))
    with rec.step("what the pods got: env, PodResources, pod-cni's network namespace"):
        rec.fact("pod_host_env", pcidevice_env("pod-host"))
        rec.fact("pod_cni_env", pcidevice_env("pod-cni"))
        listing = rec.fact("podresources", list_pod_resources())
        rec.say(f"PodResources List: {listing}")
        client = podresources.allocated_devices(POD_RESOURCES, NAMESPACE, pod_name("pod-cni"), VIRT)
        rec.fact("podresources_client_pod_cni", client)
        rec.fact("podresources_calls", {
            "Get": pod_resources_call("Get", pod_name=pod_name("pod-cni"), pod_namespace=NAMESPACE),
            "GetAllocatableResources": pod_resources_call("GetAllocatableResources"),
            "List": pod_resources_call("List"),
        })  # fmt: skip
        netns = rec.fact("pod_cni_netns", sandbox_netns(pod_name("pod-cni")))
        links = rec.fact("pod_cni_links", links_in(netns["path"], nics))
        rec.say(f"pod-cni's netns {netns['path']}: {links}")
        rec.fact("pod_cni_inside", (pod_out("pod-cni") / "net").read_text())
        rec.fact("host_netdevs_with_pods", host_netdevs())
        rec.fact("checkpoint_with_pods", read_checkpoint())


def restart_kubelet(rec: Recorder, node: RealNode) -> None:
    """Item 6: one registration per kubelet start; the pods keep their devices."""
    with rec.step("kubelet restart: one registration, both pods keep their devices"):
        seen = len(node.daemon_registrations())
        rec.fact("kubelet_1_exit", node.kubelet.stop())
        rec.fact("kubelet_socket_left_behind", KUBELET_SOCKET.exists())
        node.start_kubelet()
        node.wait_registrations(1)
        record_latency(rec, node, "kubelet_restart", seen)
        listing = poll(
            "pod-host and pod-cni back in PodResources",
            holding_devices("pod-host", "pod-cni"),
            KUBELET_UP_S,
        )
        rec.fact("podresources_after_kubelet_restart", listing)
        pods = pods_where(
            lambda p: all(
                p.get(pod_name(s), {}).get("containers") for s in ("pod-host", "pod-cni")
            ),
            "pod-host and pod-cni reported with their containers again",
        )
        rec.fact("pods_after_kubelet_restart", pods)
        rec.fact("kubelet_2_registrations", node.settled_registrations())
        rec.fact("netdp_registrations_on_kubelet_restart", len(node.daemon_registrations()) - seen)


def restart_netdp(rec: Recorder, node: RealNode, spares: int) -> None:
    """Item 7: capacity and allocations unchanged across a netdp restart."""
    with rec.step("netdp restart while pods hold NICs: capacity and allocations unchanged"):
        rec.fact("checkpoint_before_netdp_restart", read_checkpoint())
        rec.fact("podresources_before_netdp_restart", list_pod_resources())
        code, seconds = node.daemon.stop(timeout=30)
        rec.fact("netdp_1_exit", code)
        rec.say(f"netdp exited {code} after SIGTERM in {seconds:.2f} s")
        restarted = time.time()
        node.start_daemon()
        node.wait_registrations(2)
        checkpoint = poll(
            "the pool back in a new checkpoint",
            lambda: pool_checkpoint(spares, written_after=restarted),
            60,
        )
        rec.fact("checkpoint_after_netdp_restart", checkpoint)
        rec.fact("podresources_after_netdp_restart", list_pod_resources())
        rec.fact("pods_after_netdp_restart", kubelet_pods())
        rec.fact("kubelet_2_registrations_after_netdp_restart", node.settled_registrations())
