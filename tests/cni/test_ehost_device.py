"""ehost-device end to end: the installed binary run as the runtime runs it, real namespaces.

The binary is installed with `netdp install-cni --dest` (as the DaemonSet's
init container does) and forwards each call to a real `netdp run` in the
test's node namespace. IPAM is the real host-local plugin with a per-test
data dir.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cnilab import (
    CNI_BIN,
    REPO,
    Daemon,
    Lab,
    full_link_state,
    full_routes,
    link_state,
    ns_routes,
    settled_link_state,
    sh,
)
from helpers import elf_facts

from deviceplugin.cni.origin import Origin
from deviceplugin.sim.podresources import PodResourcesStandIn

pytestmark = pytest.mark.root

CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


def assert_untouched(lab: Lab, name: str, before: dict) -> None:
    """Back in the node with the same name, MAC, up flag, MTU and addresses as before,
    and no netdp alias left."""
    assert lab.node_link(name) == before
    shown = sh("ip", "-j", "-d", "-n", lab.node, "link", "show", "dev", name).stdout
    assert not json.loads(shown)[0].get("ifalias")


def reservations(lab: Lab) -> list[str]:
    net = lab.data_dir / "ehd-net"
    if not net.exists():
        return []
    return sorted(p.name for p in net.iterdir() if p.name[0].isdigit())


# ------------------------------------------------------------------ ADD / DEL / CHECK


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_add_del_every_version(lab: Lab, daemon: Daemon, version: str) -> None:
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    conf = lab.conf(version, deviceID=pci, mtu=1400)
    code, result, err = lab.run("ADD", conf, pod)
    assert code == 0, (result, err)
    assert result["cniVersion"] == version
    assert result["interfaces"] == [
        {"name": "net1", "mac": before["mac"], "sandbox": f"/run/netns/{pod}"}
    ]
    [ip] = result["ips"]
    assert ip["address"] == "10.77.0.2/24" and ip["gateway"] == "10.77.0.1"
    assert ("version" in ip) == version.startswith("0.")
    state = link_state("net1", pod)
    assert state == {
        "name": "net1",
        "mac": before["mac"],
        "up": True,
        "mtu": 1400,
        "addresses": ["10.77.0.2/24"],
    }
    assert "10.78.0.0/16 via 10.77.0.1 dev net1" in ns_routes(pod)
    assert lab.node_link(name) is None
    assert reservations(lab) == ["10.77.0.2"]

    code, out, err = lab.run("DEL", conf, pod)
    assert (code, out) == (0, None), err
    assert_untouched(lab, name, before)
    assert reservations(lab) == []
    # DEL again: nothing left to do, still success.
    assert lab.run("DEL", conf, pod)[0] == 0
    assert_untouched(lab, name, before)


def test_dual_stack(lab: Lab) -> None:
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    conf = lab.conf(deviceID=pci)
    conf["ipam"]["ranges"].append([{"subnet": "fd00:77::/64", "gateway": "fd00:77::1"}])
    conf["ipam"]["routes"].append({"dst": "fd00:78::/48"})
    d = Daemon(lab)
    try:
        code, result, err = lab.run("ADD", conf, pod)
        assert code == 0, err
        assert [ip["address"] for ip in result["ips"]] == ["10.77.0.2/24", "fd00:77::2/64"]
        assert link_state("net1", pod)["addresses"] == ["10.77.0.2/24", "fd00:77::2/64"]
        v6 = sh("ip", "-n", pod, "-6", "route", "show", "fd00:78::/48").stdout
        assert "via fd00:77::1 dev net1" in v6
        assert lab.run("CHECK", {**conf, "prevResult": result}, pod)[0] == 0
        assert lab.run("DEL", conf, pod)[0] == 0
    finally:
        d.stop()
    assert_untouched(lab, name, before)


def test_ipam_called_like_libcni_v11(lab: Lab, daemon: Daemon) -> None:
    """1.1.0 with an IPAM that speaks it: same env and stdin as libcni gives a delegate."""
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    cni_path, calls = lab.recording_ipam()
    conf = lab.conf("1.1.0", deviceID=pci)
    conf["ipam"] = {"type": "recording-ipam", "anything": [1, 2]}
    stdin = json.dumps(conf).encode()
    env = {"CNI_PATH": cni_path, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web"}
    code, result, err = lab.run("ADD", stdin, pod, env=env)
    assert code == 0, err
    assert result["ips"] == [{"interface": 0, "address": "10.77.0.2/24", "gateway": "10.77.0.1"}]
    assert result["dns"] == {"nameservers": ["10.77.0.1"]}
    assert link_state("net1", pod)["addresses"] == ["10.77.0.2/24"]
    assert lab.run("DEL", stdin, pod, env=env)[0] == 0
    assert_untouched(lab, name, before)
    logged = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [c["env"]["CNI_COMMAND"] for c in logged] == ["ADD", "DEL"]
    for call in logged:
        assert call["stdin"] == stdin.decode()
        assert call["env"] == {
            "CNI_COMMAND": call["env"]["CNI_COMMAND"],
            "CNI_CONTAINERID": "c1",
            "CNI_NETNS": f"/run/netns/{pod}",
            "CNI_IFNAME": "net1",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
            "CNI_PATH": cni_path,
        }


@pytest.mark.parametrize("selector", ["device", "hwaddr", "pciBusID", "runtimeConfig"])
def test_device_selectors(lab: Lab, daemon: Daemon, selector: str) -> None:
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    extra = {
        "device": {"device": name},
        "hwaddr": {"hwaddr": before["mac"].upper()},
        "pciBusID": {"pciBusID": pci},
        "runtimeConfig": {"runtimeConfig": {"deviceID": pci}},
    }[selector]
    conf = lab.conf(ipam=False, **extra)
    code, result, err = lab.run("ADD", conf, pod, ifname="eth7")
    assert code == 0, err
    assert "ips" not in result
    assert link_state("eth7", pod)["up"] is True
    assert lab.run("DEL", conf, pod, ifname="eth7")[0] == 0
    assert_untouched(lab, name, before)


def test_check(lab: Lab, daemon: Daemon) -> None:
    pci, _ = lab.nic()
    pod = lab.netns("pod")
    conf = lab.conf(deviceID=pci)
    code, result, _ = lab.run("ADD", conf, pod)
    assert code == 0
    checked = {**conf, "prevResult": result}
    code, out, err = lab.run("CHECK", checked, pod)
    assert (code, out) == (0, None), err
    sh("ip", "-n", pod, "addr", "flush", "dev", "net1")
    code, out, _ = lab.run("CHECK", checked, pod)
    assert code == 1 and "10.77.0.2/24" in out["msg"]
    assert lab.run("DEL", conf, pod)[0] == 0


def test_version(lab: Lab, daemon: Daemon) -> None:
    code, out, _ = lab.run("VERSION", b'{"cniVersion": "1.1.0"}', None)
    assert code == 0
    assert out == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


def test_status(lab: Lab, daemon: Daemon) -> None:
    code, out, _ = lab.run("STATUS", lab.conf("1.1.0"), None)
    assert (code, out) == (0, None)
    broken = lab.conf("1.1.0")
    broken["ipam"]["type"] = "no-such-ipam"
    code, out, _ = lab.run("STATUS", broken, None)
    assert code == 1 and out["code"] == 50
    code, out, _ = lab.run("STATUS", lab.conf("1.0.0"), None)
    assert code == 1 and out["code"] == 1


def test_devinfo_file(lab: Lab, daemon: Daemon) -> None:
    pci, _ = lab.nic()
    pod = lab.netns("pod")
    path = lab.tmp / "devinfo" / "cni" / "ehd-net-c1-net1-device.json"
    conf = lab.conf(deviceID=pci, runtimeConfig={"CNIDeviceInfoFile": str(path)})
    assert lab.run("ADD", conf, pod)[0] == 0
    assert json.loads(path.read_text()) == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": pci},
    }
    assert lab.run("DEL", conf, pod)[0] == 0
    assert not path.exists()


# ------------------------------------------------------------------ differential


IPAMS = {
    # The case: a /24 lease, whose broadcast address Go sets.
    "host-local-v4": {"ranges": [[{"subnet": "198.18.0.0/24", "gateway": "198.18.0.1"}]]},
    "host-local-dual": {
        "ranges": [
            [{"subnet": "10.77.0.0/24", "gateway": "10.77.0.1"}],
            [{"subnet": "fd00:77::/64", "gateway": "fd00:77::1"}],
        ],
        "routes": [{"dst": "10.78.0.0/16"}, {"dst": "fd00:78::/48"}],
    },
    # The broadcast rule's edges: /30 has one, /31 and /32 have none (RFC 3021).
    "static-edges": {
        "type": "static",
        "addresses": [
            {"address": "198.19.0.1/30", "gateway": "198.19.0.2"},
            {"address": "198.19.1.0/31"},
            {"address": "198.19.2.7/32"},
        ],
        "routes": [{"dst": "10.79.0.0/16", "gw": "198.19.0.2"}],
    },
}


def by_design(go: dict, origin: Origin) -> dict:
    """Go's pod state as ehost-device must leave it, where the two differ on purpose.

    - The alias: both remember the NIC's host name there for DEL; Go writes the bare
      name, ehost-device its origin marker (name, PCI address, host MTU), which DEL
      still reads after the pod and its namespace are gone.
    - IPv6 duplicate address detection: Go runs it on IPAM's addresses and waits up to
      10 s for it to end; ehost-device adds them, unique by construction, with NODAD,
      usable at once. Settled, the two differ only in that flag.
    (And after DEL Go leaves the host name in the host NIC's alias; ehost-device
    restores the NIC exactly as it was.)
    """
    expected = copy.deepcopy(go)
    link = expected["net1"]["link"]
    assert link.get("ifalias") == origin.orig_name, "Go's host-device keeps the host name"
    link["ifalias"] = origin.to_alias()
    for address in expected["net1"]["addresses"]:
        if address["family"] == "inet6" and address["scope"] == "global":
            address.pop("tentative", None)
            address["nodad"] = True
    expected["net1"]["addresses"].sort(key=lambda a: json.dumps(a, sort_keys=True))
    return expected


def pod_side(pod: str) -> dict:
    """The pod's whole network state once the kernel has settled it: net1 with its
    addresses, every route of every table, and which links the pod holds."""
    net1 = settled_link_state("net1", pod)
    links = json.loads(sh("ip", "-j", "-n", pod, "link", "show").stdout)
    return {
        "net1": net1,
        "routes": full_routes(pod),
        "links": sorted(link["ifname"] for link in links),
    }


@pytest.mark.parametrize(
    ("version", "ipam"),
    [(v, "host-local-v4") for v in ("0.3.1", "0.4.0", "1.0.0")]
    + [("1.0.0", "host-local-dual"), ("1.0.0", "static-edges")],
)
def test_same_as_go_host_device(lab: Lab, version: str, ipam: str) -> None:
    """Same device, same IPAM config: the same result, the same pod, field by field, and
    the same host after DEL as before ADD. Where ehost-device differs by design, Go's
    state is compared with the value ehost-device must have instead (`by_design`)."""
    d = Daemon(lab)
    try:
        pci, name = lab.nic()
        lab.plug_in(name)  # carrier: the pod's link settles UP, IPv6 finishes DAD
        before = full_link_state(name, lab.node)
        assert before is not None
        pod = lab.netns("pod")
        outcomes = {}
        for plugin in ("host-device", "ehost-device"):
            conf = lab.conf(version, device=name)
            conf["ipam"] = {"type": "host-local", **IPAMS[ipam]}
            conf["ipam"]["dataDir"] = str(lab.tmp / f"ipam-{plugin}")
            binary = f"{CNI_BIN}/host-device" if plugin == "host-device" else None
            code, result, err = lab.run("ADD", conf, pod, plugin=binary)
            assert code == 0, (plugin, err)
            in_pod = pod_side(pod)
            code, out, err = lab.run("DEL", conf, pod, plugin=binary)
            assert code == 0, (plugin, out, err)
            outcomes[plugin] = (result, in_pod, full_link_state(name, lab.node))
        go, ours = outcomes["host-device"], outcomes["ehost-device"]
        expected = by_design(go[1], Origin(name, pci))  # no MTU asked: none to restore
        assert ours[0] == go[0]  # the CNI result
        assert ours[1]["net1"]["link"] == expected["net1"]["link"]
        assert ours[1]["net1"]["addresses"] == expected["net1"]["addresses"]
        assert ours[1]["routes"] == expected["routes"]
        assert ours[1] == expected
        # The host after DEL: as before ADD; Go leaves its alias behind.
        assert ours[2] == before
        assert go[2] == {**before, "link": {**before["link"], "ifalias": name}}
    finally:
        d.stop()


# ------------------------------------------------------------------ failure paths


def _bad_ipam_conf(lab: Lab, pci: str, how: str) -> dict:
    conf = lab.conf(deviceID=pci)
    if how == "missing-plugin":
        conf["ipam"]["type"] = "no-such-ipam"
    elif how == "ipam-error":
        conf["ipam"]["ranges"] = [[{"subnet": "10.77.0.0/33"}]]
    elif how == "unroutable":
        # IPAM succeeds, then the kernel refuses the route: the lease must be released too.
        conf["ipam"]["routes"] = [{"dst": "10.78.0.0/16", "gw": "192.0.2.1"}]
    return conf


@pytest.mark.parametrize("how", ["missing-plugin", "ipam-error", "unroutable"])
def test_failure_after_move_rolls_back(lab: Lab, daemon: Daemon, how: str) -> None:
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    code, out, _ = lab.run("ADD", _bad_ipam_conf(lab, pci, how), pod)
    assert code == 1 and out["code"] in (104, 105), out
    assert_untouched(lab, name, before)
    assert link_state("net1", pod) is None
    assert reservations(lab) == []


def test_running_device_comes_back_running(lab: Lab, daemon: Daemon) -> None:
    pci, name = lab.nic()
    sh("ip", "-n", lab.node, "link", "set", name, "up")
    before = lab.node_link(name)
    assert before["up"]
    pod = lab.netns("pod")
    code, out, _ = lab.run("ADD", _bad_ipam_conf(lab, pci, "ipam-error"), pod)
    assert code == 1 and out["code"] == 104
    assert_untouched(lab, name, before)


@pytest.mark.parametrize(
    ("case", "expected_code"),
    [("no-netns", 3), ("no-device", 100), ("bad-json", 6), ("old-version", 1), ("taken-ifname", 7)],
)
def test_refusals_leave_device_alone(
    lab: Lab, daemon: Daemon, case: str, expected_code: int
) -> None:
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    conf: dict | bytes = lab.conf(deviceID=pci)
    netns = pod
    if case == "no-netns":
        netns = f"{pod}-gone"
    elif case == "no-device":
        conf = lab.conf(deviceID="0000:00:7f.0")
    elif case == "bad-json":
        conf = b'{"cniVersion": "1.0.0", '
    elif case == "old-version":
        conf = lab.conf("0.2.0", deviceID=pci)
    elif case == "taken-ifname":
        sh("ip", "-n", pod, "link", "add", "net1", "type", "veth", "peer", "name", "other")
    code, out, _ = lab.run("ADD", conf, netns)
    assert code == 1 and out["code"] == expected_code, out
    assert {"code", "msg"} <= set(out)
    assert_untouched(lab, name, before)
    assert reservations(lab) == []


def test_device_in_use(lab: Lab, daemon: Daemon) -> None:
    pci, name = lab.nic()
    pod_a, pod_b = lab.netns("a"), lab.netns("b")
    conf = lab.conf(deviceID=pci)
    assert lab.run("ADD", conf, pod_a, cid="a")[0] == 0
    lab.fake.move_netdev_out(pci)  # what the kernel's sysfs shows once the NIC is in a pod
    code, out, _ = lab.run("ADD", conf, pod_b, cid="b")
    assert code == 1 and out["code"] == 101
    assert link_state("net1", pod_a)["addresses"] == ["10.77.0.2/24"]
    assert link_state("net1", pod_b) is None
    assert lab.run("DEL", conf, pod_b, cid="b")[0] == 0  # DEL of the failed ADD touches nothing
    assert link_state("net1", pod_a) is not None
    assert lab.run("DEL", conf, pod_a, cid="a")[0] == 0
    assert lab.node_link(name) is not None


def test_two_adds_one_device_race(lab: Lab, daemon: Daemon) -> None:
    pci, name = lab.nic()
    pods = [lab.netns(f"r{i}") for i in range(2)]
    conf = lab.conf(deviceID=pci)
    results: dict[int, tuple] = {}

    def add(i: int) -> None:
        results[i] = lab.run("ADD", conf, pods[i], cid=f"r{i}")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r[0] for r in results.values())
    assert codes == [0, 1], results
    loser = next(i for i, r in results.items() if r[0] == 1)
    assert results[loser][1]["code"] == 101
    winner = 1 - loser
    assert link_state("net1", pods[winner]) is not None
    assert link_state("net1", pods[loser]) is None
    assert reservations(lab) == ["10.77.0.2"]
    assert lab.run("DEL", conf, pods[winner], cid=f"r{winner}")[0] == 0
    assert lab.node_link(name) is not None


def test_parallel_adds_different_devices(lab: Lab, daemon: Daemon) -> None:
    nics = [lab.nic() for _ in range(4)]
    pods = [lab.netns(f"p{i}") for i in range(4)]
    results: dict[int, tuple] = {}

    def add(i: int) -> None:
        results[i] = lab.run("ADD", lab.conf(deviceID=nics[i][0]), pods[i], cid=f"p{i}")

    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r[0] == 0 for r in results.values()), results
    addresses = {r[1]["ips"][0]["address"] for r in results.values()}
    assert len(addresses) == 4
    for i, (_, name) in enumerate(nics):
        assert lab.run("DEL", lab.conf(deviceID=nics[i][0]), pods[i], cid=f"p{i}")[0] == 0
        assert lab.node_link(name) is not None


# ------------------------------------------------------------------ namespace gone


def _kernel_returns_device(lab: Lab, pod: str, ifname: str, pci: str) -> None:
    """What the kernel does to a physical NIC when its pod's namespace dies.

    A veth would be destroyed with the namespace, so the test moves it back to
    the node under its pod name first, then deletes the namespace.
    """
    sh("ip", "-n", pod, "link", "set", ifname, "down")
    sh("ip", "-n", pod, "link", "set", ifname, "netns", lab.node)
    sh("ip", "netns", "del", pod)
    lab.fake.return_netdev(pci, ifname)


@pytest.mark.parametrize("command", ["DEL", "GC"])
def test_namespace_gone(lab: Lab, daemon: Daemon, command: str) -> None:
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    ifname = f"p{lab.suffix}"
    cni_path, _ = lab.recording_ipam()
    conf = lab.conf("1.1.0", deviceID=pci, mtu=1300)
    conf["ipam"] = {"type": "recording-ipam"}
    env = {"CNI_PATH": cni_path}
    assert lab.run("ADD", conf, pod, ifname=ifname, env=env)[0] == 0
    lab.fake.move_netdev_out(pci)
    _kernel_returns_device(lab, pod, ifname, pci)
    assert lab.node_link(ifname)["mtu"] == 1300
    code, out, err = lab.run(command, conf, pod, ifname=ifname, env=env)
    assert (code, out) == (0, None), err
    assert_untouched(lab, name, before)


def test_host_name_taken_at_del(lab: Lab, daemon: Daemon) -> None:
    """DEL cannot rename back while the name is taken; a later DEL finishes the job."""
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    ifname = f"q{lab.suffix}"
    conf = lab.conf(deviceID=pci, mtu=1400)
    assert lab.run("ADD", conf, pod, ifname=ifname)[0] == 0
    blocker = f"ez{lab.suffix}"
    sh("ip", "-n", lab.node, "link", "add", name, "type", "veth", "peer", "name", blocker)
    lab.fake.move_netdev_out(pci)
    try:
        code, out, err = lab.run("DEL", conf, pod, ifname=ifname)
        assert (code, out) == (0, None), err
        assert lab.node_link(ifname) is not None  # on the node, under its pod name
        assert link_state(ifname, pod) is None
        lab.fake.return_netdev(pci, ifname)
    finally:
        sh("ip", "-n", lab.node, "link", "del", blocker)
    assert lab.run("DEL", conf, pod, ifname=ifname)[0] == 0
    assert_untouched(lab, name, before)


# ------------------------------------------------------------------ safety


def test_default_route_device_refused(lab: Lab, daemon: Daemon) -> None:
    """The node's default route leaves through this NIC: it never goes to a pod."""
    pci = lab.fake.add_virtio_nic("0000:00:1f.0", lab.uplink)
    before = lab.node_link(lab.uplink)
    pod = lab.netns("pod")
    code, out, _ = lab.run("ADD", lab.conf(deviceID=pci), pod)
    assert code == 1 and out["code"] == 102, out
    assert_untouched(lab, lab.uplink, before)
    assert reservations(lab) == []


@pytest.fixture
def podresources(lab: Lab) -> Iterator[PodResourcesStandIn]:
    with PodResourcesStandIn(lab.tmp / "kubelet.sock") as standin:
        yield standin


def test_resource_name(lab: Lab, podresources: PodResourcesStandIn, daemon: Daemon) -> None:
    (pci_a, name_a), (pci_b, name_b) = lab.nic(), lab.nic()
    podresources.set_pod("default", "web", {"app": {"netdp.io/virtio": [pci_b]}})
    pod = lab.netns("pod")
    # The daemon asks the kubelet's PodResources at lab.tmp/kubelet.sock: the stand-in.
    env = {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}
    before_a = lab.node_link(name_a)
    refused = lab.conf(deviceID=pci_a, resourceName="netdp.io/virtio")
    code, out, _ = lab.run("ADD", refused, pod, env=env)
    assert code == 1 and out["code"] == 103, out
    assert_untouched(lab, name_a, before_a)

    picked = lab.conf(resourceName="netdp.io/virtio")
    code, result, err = lab.run("ADD", picked, pod, env=env)
    assert code == 0, err
    assert result["interfaces"][0]["mac"] == link_state("net1", pod)["mac"]
    assert lab.node_link(name_b) is None
    assert lab.run("DEL", picked, pod, env=env)[0] == 0
    assert lab.node_link(name_b) is not None


@pytest.mark.parametrize(
    ("cni_args", "expected_code"),
    [
        # No stand-in here: the daemon's PodResources socket is missing.
        ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web", 106),
        ("IgnoreUnknown=1", 4),
    ],
)
def test_resource_name_lookup_failures(
    lab: Lab, daemon: Daemon, cni_args: str, expected_code: int
) -> None:
    pci, name = lab.nic()
    before = lab.node_link(name)
    env = {"CNI_ARGS": cni_args}
    conf = lab.conf(deviceID=pci, resourceName="netdp.io/virtio")
    code, out, _ = lab.run("ADD", conf, lab.netns("pod"), env=env)
    assert code == 1 and out["code"] == expected_code, out
    assert_untouched(lab, name, before)


# ------------------------------------------------------------------ daemon lifecycle


def test_without_the_daemon_calls_are_try_again_later(lab: Lab) -> None:
    """A socket file left by a dead daemon: ADD and DEL both say "try again later"
    (the runtime retries), and nothing is touched."""
    pci, name = lab.nic()
    before = lab.node_link(name)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(lab.socket))
    s.close()
    pod = lab.netns("pod")
    for command in ("ADD", "DEL"):
        code, out, err = lab.run(command, lab.conf(deviceID=pci), pod)
        assert code == 1 and out["code"] == 11, (command, out, err)
        assert out["msg"].startswith(f"netdp daemon not reachable at {lab.socket}")
    assert_untouched(lab, name, before)
    assert reservations(lab) == []


def _slow_ipam(lab: Lab) -> tuple[str, Path]:
    """An IPAM plugin whose ADD hangs (after touching the returned marker file) and
    whose DEL is logged to tmp/ipam-dels; returns (CNI_PATH, marker)."""
    bin_dir = lab.tmp / "slowbin"
    bin_dir.mkdir()
    marker = lab.tmp / "ipam-started"
    slow = bin_dir / "slow-ipam"
    slow.write_text(
        "#!/bin/sh\n"
        f'if [ "$CNI_COMMAND" = ADD ]; then touch {marker}; sleep 30; fi\n'
        f"echo DEL >> {lab.tmp / 'ipam-dels'}\n"
    )
    slow.chmod(0o755)
    return f"{bin_dir}:{CNI_BIN}", marker


def test_daemon_dies_mid_add(lab: Lab) -> None:
    """Killed while IPAM runs: the binary says "try again later"; the runtime's DEL,
    through the restarted daemon, takes the NIC back and releases the lease."""
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    cni_path, marker = _slow_ipam(lab)
    conf = lab.conf(deviceID=pci)
    conf["ipam"] = {"type": "slow-ipam"}
    d = Daemon(lab)
    try:
        env = {**lab.env("ADD", pod), "CNI_PATH": cni_path}
        stdin = lab.tmp / "stdin.json"
        stdin.write_text(json.dumps(conf))
        with stdin.open("rb") as f:
            proc = subprocess.Popen(
                lab.in_node(str(lab.plugin)),
                stdin=f,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert time.monotonic() < deadline, "IPAM never started"
            time.sleep(0.01)
        assert link_state("net1", pod) is not None  # mid-call: the NIC is in the pod
        d.kill()
        out, err = proc.communicate(timeout=30)
    finally:
        d.stop()
    assert (proc.returncode, err) == (1, b"")
    answer = json.loads(out)
    assert answer["code"] == 11 and "broke off the call" in answer["msg"], answer
    d = Daemon(lab)
    try:
        code, out, err = lab.run("DEL", conf, pod, env={"CNI_PATH": cni_path})
        assert (code, out) == (0, None), err
    finally:
        d.stop()
    assert_untouched(lab, name, before)
    assert (lab.tmp / "ipam-dels").read_text() == "DEL\n"


def test_daemon_down_between_add_and_del(lab: Lab) -> None:
    """Nothing is lost while the daemon is away: its DEL is refused with "try again
    later", the pod's namespace goes (the kernel hands the NIC back under its pod
    name), and the restarted daemon puts the NIC home before the retried DEL comes,
    which then releases the lease."""
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    conf = lab.conf(deviceID=pci, mtu=1400)
    d = Daemon(lab)
    try:
        assert lab.run("ADD", conf, pod)[0] == 0
    finally:
        d.kill()
    code, out, _ = lab.run("DEL", conf, pod)
    assert code == 1 and out["code"] == 11, out
    assert reservations(lab) == ["10.77.0.2"]  # kept until a DEL succeeds
    lab.fake.move_netdev_out(pci)
    _kernel_returns_device(lab, pod, "net1", pci)
    assert lab.node_link("net1")["mtu"] == 1400
    d = Daemon(lab)
    try:
        event = d.wait_event("nic_repaired")
        assert (event["device"], event["netdev"], event["name"]) == (pci, "net1", name)
        assert_untouched(lab, name, before)
        code, out, err = lab.run("DEL", conf, pod)
        assert (code, out) == (0, None), err
    finally:
        d.stop()
    assert_untouched(lab, name, before)
    assert reservations(lab) == []


def test_rescan_repairs_too(lab: Lab) -> None:
    """A NIC stranded while the daemon runs is put home by the next rescan (here SIGHUP)."""
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    ifname = f"p{lab.suffix}"
    d = Daemon(lab)
    try:
        d.wait_event("discovery_done")
        assert lab.run("ADD", lab.conf(deviceID=pci, ipam=False), pod, ifname=ifname)[0] == 0
        lab.fake.move_netdev_out(pci)
        _kernel_returns_device(lab, pod, ifname, pci)
        assert d.events("nic_repaired") == []
        d.proc.send_signal(signal.SIGHUP)
        event = d.wait_event("nic_repaired")
        assert (event["device"], event["netdev"], event["name"]) == (pci, ifname, name)
    finally:
        d.stop()
    assert_untouched(lab, name, before)


# ------------------------------------------------------------------ installation


def test_installed_binary_needs_nothing_but_itself(lab: Lab) -> None:
    """Installed with `netdp install-cni`, the file is a static ELF and does a whole
    ADD and DEL in an empty root: no interpreter, no libraries, no python3, an
    environment of CNI_* variables and the socket path only."""
    root = lab.tmp / "empty-root"
    proc = subprocess.run(
        [sys.executable, "-m", "deviceplugin", "install-cni", "--dest", str(root)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    plugin = root / "ehost-device"
    assert proc.stdout.startswith(f"installed {plugin} (")
    assert sorted(p.name for p in root.iterdir()) == ["ehost-device"]
    assert elf_facts(plugin.read_bytes()) == {"type": "EXEC", "interpreter": False,
                                              "dynamic": False}  # fmt: skip
    pci, name = lab.nic()
    before = lab.node_link(name)
    pod = lab.netns("pod")
    d = Daemon(lab)
    try:
        os.link(lab.socket, root / "cni.sock")  # the daemon's socket, seen from inside
        for command in ("ADD", "DEL"):
            env = {
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": "c1",
                "CNI_NETNS": f"/run/netns/{pod}",
                "CNI_IFNAME": "net1",
                "CNI_PATH": CNI_BIN,  # where the daemon finds host-local
                "NETDP_CNI_SOCKET": "/cni.sock",
            }
            proc = subprocess.run(
                ["ip", "netns", "exec", lab.node, CHROOT, str(root), "/ehost-device"],
                input=json.dumps(lab.conf(deviceID=pci)).encode(),
                env=env,
                capture_output=True,
                timeout=60,
            )
            assert (proc.returncode, proc.stderr) == (0, b""), (command, proc)
            if command == "ADD":
                assert json.loads(proc.stdout)["ips"][0]["address"] == "10.77.0.2/24"
                assert link_state("net1", pod) is not None
    finally:
        d.stop()
    assert_untouched(lab, name, before)
