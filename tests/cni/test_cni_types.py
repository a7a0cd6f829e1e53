"""The CNI protocol core on plain data: parsing, errors, result shapes, alias."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from world import POD, World

from deviceplugin.cni.executor import Executor, Settings
from deviceplugin.cni.origin import Origin, parse_alias
from deviceplugin.cni.types import (
    SUPPORTED_VERSIONS,
    CniError,
    DeviceSelector,
    Interface,
    IpamResult,
    IpConfig,
    Route,
    build_result,
    config_version,
    normalize_pci,
    parse_ipam_result,
    parse_request,
    prev_interface,
)

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "net1",
    "CNI_PATH": "/opt/cni/bin",
}


def conf(**extra: object) -> bytes:
    return json.dumps(
        {"cniVersion": "1.0.0", "name": "n", "type": "ehost-device", **extra}
    ).encode()


def error_of(env: dict, stdin: bytes) -> CniError:
    with pytest.raises(CniError) as info:
        parse_request(env, stdin)
    return info.value


def test_device_selection_order() -> None:
    both = conf(
        deviceID="0000:00:05.0",
        runtimeConfig={"deviceID": "0000:00:06.0"},
        pciBusID="00:07.0",
        device="eth9",
    )
    assert parse_request(ENV, both).selector == DeviceSelector(pci_address="0000:00:05.0")
    runtime = conf(runtimeConfig={"deviceID": "0000:00:06.0"}, pciBusID="00:07.0")
    assert parse_request(ENV, runtime).selector.pci_address == "0000:00:06.0"
    assert parse_request(ENV, conf(pciBusID="00:07.0")).selector.pci_address == "0000:00:07.0"
    assert parse_request(ENV, conf(device="eth9", hwaddr="AA:BB:CC:DD:EE:FF")).selector == (
        DeviceSelector(netdev="eth9")
    )
    assert parse_request(ENV, conf(hwaddr="AA:BB:CC:DD:EE:FF")).selector.hwaddr == (
        "aa:bb:cc:dd:ee:ff"
    )


def test_request_fields() -> None:
    env = {**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}
    req = parse_request(
        env,
        conf(
            resourceName="netdp.io/virtio",
            mtu=1400,
            ipam={"type": "host-local"},
            runtimeConfig={"CNIDeviceInfoFile": "/run/x.json"},
        ),
    )
    assert req.pod == ("ns", "p")
    assert (req.mtu, req.ipam_type, req.devinfo_file) == (1400, "host-local", "/run/x.json")
    assert req.cni_path == ("/opt/cni/bin",)


@pytest.mark.parametrize(
    ("env", "stdin", "code"),
    [
        ({**ENV, "CNI_COMMAND": "FROB"}, conf(deviceID="0000:00:05.0"), 4),
        ({**ENV, "CNI_NETNS": ""}, conf(deviceID="0000:00:05.0"), 4),
        ({**ENV, "CNI_IFNAME": "a" * 16}, conf(deviceID="0000:00:05.0"), 4),
        ({**ENV, "CNI_IFNAME": "a/b"}, conf(deviceID="0000:00:05.0"), 4),
        ({**ENV, "CNI_CONTAINERID": "-bad"}, conf(deviceID="0000:00:05.0"), 4),
        ({**ENV, "CNI_ARGS": "novalue"}, conf(deviceID="0000:00:05.0"), 4),
        (ENV, b"{not json", 6),
        (ENV, b"[1, 2]", 6),
        (ENV, json.dumps({"cniVersion": "0.2.0", "name": "n"}).encode(), 1),
        (ENV, json.dumps({"name": "n", "deviceID": "0000:00:05.0"}).encode(), 1),
        (ENV, conf(), 7),
        (ENV, conf(deviceID="eth0"), 7),
        (ENV, conf(deviceID="0000:00:05.0", mtu="9000"), 7),
        (ENV, conf(deviceID="0000:00:05.0", ipam={"type": "../x"}), 7),
        (ENV, conf(hwaddr="nope"), 7),
        ({**ENV, "CNI_COMMAND": "CHECK"}, conf(deviceID="0000:00:05.0"), 7),
        ({**ENV, "CNI_COMMAND": "STATUS"}, conf(), 1),
        ({**ENV, "CNI_COMMAND": "CHECK"}, conf(cniVersion="0.3.1", prevResult={}), 1),
    ],
)
def test_bad_requests(env: dict, stdin: bytes, code: int) -> None:
    assert error_of(env, stdin).code == code


def test_del_needs_no_netns_and_no_device() -> None:
    env = {k: v for k, v in ENV.items() if k != "CNI_NETNS"} | {"CNI_COMMAND": "DEL"}
    req = parse_request(env, conf())
    assert req.netns == "" and req.selector.empty


def test_version_ignores_stdin() -> None:
    assert parse_request({"CNI_COMMAND": "VERSION"}, b"garbage").command == "VERSION"


def test_gc_needs_no_name() -> None:
    stdin = json.dumps(
        {"cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "x"}]}
    ).encode()
    assert parse_request({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, stdin).command == "GC"


def test_normalize_pci() -> None:
    assert normalize_pci("00:05.0") == "0000:00:05.0"
    assert normalize_pci("0000:AF:00.7") == "0000:af:00.7"
    assert normalize_pci("0000:00:05.8") is None


IPAM = IpamResult(
    ips=(IpConfig("10.1.0.5/24", "10.1.0.1"), IpConfig("fd00::5/64")),
    routes=(Route("0.0.0.0/0"), Route("10.2.0.0/16", "10.1.0.9")),
    dns={"nameservers": ["10.1.0.1"]},
)
IFACE = Interface("net1", "aa:bb:cc:dd:ee:ff", "/run/netns/x")


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_result_shapes(version: str) -> None:
    result = build_result(version, [IFACE], IPAM)
    assert result["cniVersion"] == version
    assert result["interfaces"] == [
        {"name": "net1", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}
    ]
    legacy = version.startswith("0.")
    assert [("version" in ip) for ip in result["ips"]] == [legacy, legacy]
    assert all(ip["interface"] == 0 for ip in result["ips"])
    assert result["routes"][1] == {"dst": "10.2.0.0/16", "gw": "10.1.0.9"}
    assert parse_ipam_result(result) == IPAM


def test_result_without_ipam() -> None:
    assert build_result("1.0.0", [IFACE], None) == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
        "dns": {},
    }


def test_parse_ipam_result_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_ipam_result({"ips": [{"address": "10.0.0.300/24"}]})


def test_prev_interface_picks_our_ips() -> None:
    prev = {
        "interfaces": [
            {"name": "eth0", "sandbox": "/run/netns/x"},
            {"name": "net1", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"},
        ],
        "ips": [
            {"interface": 0, "address": "10.0.0.5/24"},
            {"interface": 1, "address": "10.1.0.5/24"},
        ],
    }
    entry, addresses = prev_interface(prev, "net1", "/run/netns/x")
    assert entry["mac"] == "aa:bb:cc:dd:ee:ff"
    assert addresses == ("10.1.0.5/24",)
    assert prev_interface(prev, "net1", "/run/netns/other") is None
    assert prev_interface(prev, "net2", "/run/netns/x") is None


def test_alias_round_trip() -> None:
    origin = Origin(orig_name="ens5", pci_address="0000:00:05.0", mtu=1500)
    assert parse_alias(origin.to_alias()) == origin
    assert parse_alias(Origin("ens5").to_alias()) == Origin("ens5")
    assert parse_alias("uplink to rack 4") is None
    assert parse_alias("netdp:pci=") is None
    assert parse_alias("netdp:orig=ens5;mtu=\u00b2") == Origin("ens5")  # "²".isdigit()


@given(st.text(max_size=60).map(lambda t: "netdp:" + t) | st.text(max_size=60))
def test_alias_parser_never_raises(alias: str) -> None:
    """A pod holding the NIC can write any alias: DEL must still read it."""
    origin = parse_alias(alias)
    assert origin is None or (origin.orig_name and parse_alias(origin.to_alias()) is not None)


def test_version_command_through_executor() -> None:
    out = Executor().run({"CNI_COMMAND": "VERSION"}, b"{}")
    assert out.exit_code == 0
    assert json.loads(out.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)


# ------------------------------------------------------------------ properties

env_values = st.one_of(st.text(max_size=20), st.sampled_from(["ADD", "DEL", "CHECK", "GC"]))
env_strategy = st.dictionaries(
    st.sampled_from(
        ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]
    ),
    env_values,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
config_keys = st.sampled_from(
    [
        "cniVersion",
        "name",
        "deviceID",
        "pciBusID",
        "device",
        "hwaddr",
        "mtu",
        "ipam",
        "runtimeConfig",
        "resourceName",
        "prevResult",
        "cni.dev/valid-attachments",
    ]
)
configs = st.dictionaries(
    config_keys,
    st.one_of(json_values, st.sampled_from(SUPPORTED_VERSIONS), st.just("0000:00:05.0")),
)
stdins = st.one_of(
    st.binary(max_size=64),
    configs.map(lambda c: json.dumps(c).encode()),
)


@settings(max_examples=400, deadline=None)
@given(env=env_strategy, stdin=stdins)
def test_parser_never_raises_anything_but_cni_error(env: dict, stdin: bytes) -> None:
    try:
        parse_request(env, stdin)
    except CniError as exc:
        doc = exc.to_json(config_version(stdin))
        assert isinstance(doc["code"], int) and doc["msg"]
        json.dumps(doc)


# DEL and GC are left out: valid ones would act on the host's links.
OFFLINE = Executor(Settings(sysfs_root=Path("/nonexistent"), lock_dir=Path("/nonexistent")))


@settings(max_examples=200, deadline=None)
@given(env=env_strategy, stdin=stdins, command=st.sampled_from(["ADD", "CHECK", "VERSION", "X"]))
def test_executor_answers_bad_input_with_error_json(env: dict, stdin: bytes, command: str) -> None:
    """End to end minus the kernel: malformed calls never reach netlink, always get JSON."""
    env = {
        **env,
        "CNI_NETNS": "/nonexistent/ns",
        "CNI_PATH": "/nonexistent",
        "CNI_COMMAND": command,
    }
    out = OFFLINE.run(env, stdin)
    if out.exit_code != 0:
        doc = json.loads(out.stdout)
        assert set(doc) >= {"code", "msg"}


@settings(max_examples=200, deadline=None)
@given(
    env=env_strategy,
    stdin=stdins,
    command=st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "X"]),
    netns=st.sampled_from([POD, "/run/netns/gone", ""]),
)
def test_executor_on_fake_ports_answers_anything(
    env: dict, stdin: bytes, command: str, netns: str
) -> None:
    """Every command, DEL and GC too, on in-memory ports: an answer, never a crash; no
    namespace left open; a failed ADD leaves the NIC exactly as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        pci, _ = world.nic(5)
        before = world.kernel.state(pci)
        env = {**env, "CNI_COMMAND": command, "CNI_NETNS": netns, "CNI_PATH": "/nonexistent"}
        out = world.executor.run(env, stdin)
        assert world.kernel.open == 0
        assert world.kernel.where(pci) is not None
        if out.exit_code != 0:
            doc = json.loads(out.stdout)
            assert set(doc) >= {"code", "msg"}
            if command == "ADD":
                assert world.kernel.state(pci) == before
        elif out.stdout:
            json.loads(out.stdout)
