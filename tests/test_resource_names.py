"""One rule for resource names, the kubelet's: the table, and everyone who asks it.

The table is written from the Kubernetes v1.20.2 sources (the release the
real-node tests run): `pkg/kubelet/cm/devicemanager/manager.go` `Register`
refuses a name unless `v1helper.IsExtendedResourceName` holds
(`pkg/apis/core/v1/helper/helpers.go`), which is: not `IsNativeResource`
(no '/', or `kubernetes.io/` anywhere in it), not starting with `requests.`,
and `requests.<name>` passing apimachinery's `IsQualifiedName`
(`staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go`:
at most one '/', a DNS-1123 subdomain of at most 253 characters before it,
`([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]` of at most 63 after it).

Config validation checks the two parts (`resourcePrefix`, `resourceName`)
so its errors name the field; the property test holds the part rules to the
whole-name rule, so the two can never drift apart again.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deviceplugin.api.constants import VERSION as API_VERSION
from deviceplugin.api.names import (
    domain_problems,
    extended_resource_name_problems,
    is_extended_resource_name,
    name_problems,
)
from deviceplugin.api.v1beta1 import api_pb2
from deviceplugin.config import ConfigError, parse_config
from deviceplugin.kubelet import Registrar
from deviceplugin.pools import PoolSpec
from deviceplugin.server import PoolServer
from deviceplugin.sim.kubelet import KubeletStandIn, register_problem

D244 = f"{'d' * 63}.{'e' * 63}.{'f' * 63}.{'g' * 52}"  # the longest domain: 253 - len("requests.")

# (name, accepted by the v1.20.2 kubelet, why)
KUBELET_TABLE = [
    ("kernel.org/virt", True, "plain extended resource"),
    ("intel.com/intel_sriov_netdevice", True, "sriovdp's default"),
    ("example.com/A.b-c_9", True, "upper case, '.', '-', '_' allowed after '/'"),
    ("a/b", True, "a one-label domain is a DNS-1123 subdomain"),
    ("0.example.com/1", True, "labels and names may start with a digit"),
    (f"{D244}/x", True, "244-character domain: requests.<domain> is 253"),
    ("example.com/" + "n" * 63, True, "63-character name"),
    ("kubernetes.io.example.com/nic", True, "'kubernetes.io' not followed by '/'"),
    ("example.com/kubernetes.io", True, "'kubernetes.io' after the '/' has no '/' after it"),
    ("requests-example.com/nic", True, "only the 'requests.' prefix is reserved"),
    ("virt", False, "no '/': native (IsNativeResource)"),
    ("kubernetes.io/nic", False, "native domain"),
    ("nic.kubernetes.io/x", False, "contains 'kubernetes.io/': native"),
    ("xkubernetes.io/foo", False, "contains 'kubernetes.io/': native, whatever comes before"),
    ("requests.example.com/nic", False, "quota syntax"),
    ("requests.foo/bar", False, "quota syntax"),
    ("Example.com/nic", False, "upper case in the domain"),
    ("-example.com/nic", False, "domain label starts with '-'"),
    ("example-.com/nic", False, "domain label ends with '-'"),
    ("example..com/nic", False, "empty domain label"),
    ("example.com./nic", False, "trailing dot in the domain"),
    ("exa_mple.com/nic", False, "'_' in the domain"),
    ("/nic", False, "empty domain"),
    ("example.com/", False, "empty name"),
    ("example.com/a/b", False, "two '/'"),
    ("example.com/-nic", False, "name starts with '-'"),
    ("example.com/nic-", False, "name ends with '-'"),
    ("example.com/.nic", False, "name starts with '.'"),
    ("example.com/ni c", False, "space in the name"),
    ("example.com/nïc", False, "non-ASCII in the name"),
    ("example.com/nic\n", False, "a trailing newline is not an end of text"),
    ("example.com/" + "n" * 64, False, "64-character name"),
    (f"{D244}g/x", False, "245-character domain: requests.<domain> is 254"),
]


@pytest.mark.parametrize(("name", "accepted", "why"), KUBELET_TABLE)
def test_kubelet_table(name: str, accepted: bool, why: str) -> None:
    assert is_extended_resource_name(name) is accepted, why
    assert bool(extended_resource_name_problems(name)) is not accepted, why


@pytest.mark.parametrize(
    ("name", "accepted", "why"),
    [row for row in KUBELET_TABLE if row[0].count("/") == 1],  # the config puts the '/' itself
)
def test_config_accepts_exactly_what_the_kubelet_accepts(
    name: str, accepted: bool, why: str
) -> None:
    """A pool `resourcePrefix` + `resourceName` passes `config check` iff the kubelet takes it."""
    prefix, _, rest = name.partition("/")
    doc = {"resourceList": [{"resourceName": rest, "resourcePrefix": prefix, "selectors": {}}]}
    try:
        config = parse_config(doc, "table")
    except ConfigError as exc:
        assert not accepted, (why, exc.problems)
        field = "resourcePrefix" if domain_problems(prefix) else "resourceName"
        assert all(f"resourceList[0].{field}: " in p for p in exc.problems), exc.problems
        return
    assert accepted, why
    assert [p.resource_name for p in config.pools] == [name]


def test_xkubernetes_prefix_is_refused_with_the_reason() -> None:
    doc = {"resourceList": [{"resourceName": "foo", "resourcePrefix": "xkubernetes.io"}]}
    doc["resourceList"][0]["selectors"] = {}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, "x.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("resourceList[0].resourcePrefix: 'xkubernetes.io' is not a valid")
    assert "reserved for Kubernetes' own resources" in problem


texts = st.text(alphabet="abcAB019-_./kubernetes.io", max_size=20)


@given(texts, texts)
def test_part_rules_are_the_whole_name_rule(domain: str, name: str) -> None:
    """For any `domain/name` with one '/', the per-field rules agree with the kubelet's."""
    parts_ok = not domain_problems(domain) and not name_problems(name) and "/" not in name
    whole = f"{domain}/{name}"
    if "/" in domain:
        return  # not a prefix/name split
    assert parts_ok is is_extended_resource_name(whole), whole


# --- the registrar and the stand-in ask the same rule ------------------------------


def test_registrar_never_sends_a_name_the_kubelet_refuses(tmpfs_path: Path) -> None:
    """A pool named against the rule (only possible without the config parser) is reported
    with the rule's reason and never sent; a valid one beside it registers."""
    plugins = tmpfs_path / "dp"
    plugins.mkdir()
    results: list[tuple[str, bool]] = []

    async def main() -> None:
        bad = PoolServer(PoolSpec("xkubernetes.io/foo", ()), plugins, None)
        good = PoolServer(PoolSpec("example.com/foo", ()), plugins, None)
        registrar = Registrar(
            plugins, lambda: [bad, good], on_registration=lambda r, ok: results.append((r, ok))
        )
        for server in (bad, good):
            await server.start()
        try:
            await registrar.reconcile()
            await registrar.reconcile()  # asked again: still not sent, reported once
        finally:
            for server in (bad, good):
                await server.stop()

    with KubeletStandIn(plugins) as kubelet:
        asyncio.run(asyncio.wait_for(main(), 20))
        tried = [r.resource_name for r in kubelet.registrations]
    assert tried == ["example.com/foo"]
    assert results == [("xkubernetes.io/foo", False), ("example.com/foo", True)]


def test_standin_refuses_by_the_same_rule(tmpfs_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmpfs_path / "p.sock"))
    try:
        for name, accepted, _ in KUBELET_TABLE:
            request = api_pb2.RegisterRequest(
                version=API_VERSION, endpoint="p.sock", resource_name=name
            )
            problem = register_problem(request, tmpfs_path)
            assert (problem is None) is accepted, (name, problem)
    finally:
        sock.close()
