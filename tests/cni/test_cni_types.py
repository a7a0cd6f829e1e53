"""The CNI protocol core on plain data: parsing, errors, result shapes, alias."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from world import POD, World

from deviceplugin.cni.executor import Executor
from deviceplugin.cni.origin import Origin, parse_alias
from deviceplugin.cni.settings import Settings
from deviceplugin.cni.types import (
    COMMANDS,
    ERR_DEVICE_NOT_FOUND,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_INVALID_ENV,
    ERR_UNKNOWN_CONTAINER,
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
    version_result,
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
    if not alias.startswith("netdp:"):
        assert origin is None  # anybody else's alias is not ours to read
    elif origin is not None:  # what it read, written back, reads the same
        assert origin.orig_name and parse_alias(origin.to_alias()) == origin


def test_version_command_through_executor() -> None:
    out = Executor().run({"CNI_COMMAND": "VERSION"}, b"{}")
    assert out.exit_code == 0
    assert json.loads(out.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)


# ------------------------------------------------------------------ properties
#
# The parser and the executor turn every exception into error JSON, so "an
# answer came back" proves nothing. Each class of bad input below must get its
# own code and message; an internal error (199) is always a failure.

BASE = conf(deviceID="0000:00:05.0")
# os.environ holds bytes that are not UTF-8 as lone surrogates U+DC80..U+DCFF.
undecodable = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)
texts = st.text(max_size=20) | st.text(undecodable | st.sampled_from("a1-./: "), max_size=18)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


def with_config(**changes: object) -> bytes:
    doc = json.loads(BASE) | changes
    return json.dumps({k: v for k, v in doc.items() if v is not _DROP}).encode()


_DROP = object()
Case = tuple[dict, bytes, int, str]  # env, stdin, expected code, expected msg


def _not_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return True
    return False


def _is_pci(value: str) -> bool:
    return normalize_pci(value) is not None


bad_input_cases: st.SearchStrategy[Case] = st.one_of(
    texts.filter(lambda c: c not in COMMANDS).map(
        lambda c: ({**ENV, "CNI_COMMAND": c}, BASE, 4, "invalid CNI_COMMAND")
    ),
    st.binary(max_size=40)
    .filter(_not_json)
    .map(lambda b: (ENV, b, 6, "network config is not valid JSON")),
    st.just((ENV, b"[" * 5000, 6, "network config is not valid JSON")),  # nested too deep
    json_values.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: (ENV, json.dumps(v).encode(), 6, "network config must be a JSON object")
    ),
    json_values.filter(lambda v: v not in SUPPORTED_VERSIONS).map(
        lambda v: (ENV, with_config(cniVersion=v), 1, "incompatible CNI version")
    ),
    st.sets(
        st.sampled_from(["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]), min_size=1
    ).map(
        lambda gone: (
            {k: v for k, v in ENV.items() if k not in gone},
            BASE,
            4,
            "required environment variables missing",
        )
    ),
    texts.filter(lambda c: c and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", c)).map(
        lambda c: ({**ENV, "CNI_CONTAINERID": c}, BASE, 4, "invalid CNI_CONTAINERID")
    ),
    texts.filter(
        lambda n: (
            n
            and (
                len(n.encode("utf-8", "surrogateescape")) > 15
                or n in (".", "..")
                or any(c in "/:" or c.isspace() for c in n)
            )
        )
    ).map(lambda n: ({**ENV, "CNI_IFNAME": n}, BASE, 4, "invalid CNI_IFNAME")),
    texts.filter(
        lambda a: any(p and ("=" not in p or p.startswith("=")) for p in a.split(";"))
    ).map(lambda a: ({**ENV, "CNI_ARGS": a}, BASE, 4, "invalid CNI_ARGS")),
    st.one_of(st.just(_DROP), json_values.filter(lambda v: not (isinstance(v, str) and v))).map(
        lambda v: (ENV, with_config(name=v), 7, "network config needs a name")
    ),
    json_values.filter(
        lambda v: (
            v is not None
            and not (isinstance(v, int) and not isinstance(v, bool) and 68 <= v <= 65535)
        )
    ).map(lambda v: (ENV, with_config(mtu=v), 7, "mtu must be an integer from 68 to 65535")),
    texts.filter(lambda t: t and not _is_pci(t)).map(
        lambda t: (ENV, with_config(deviceID=t), 7, "deviceID is not a PCI address")
    ),
    json_values.filter(lambda v: v not in (None, "") and not isinstance(v, str)).map(
        lambda v: (ENV, with_config(deviceID=v), 7, "deviceID must be a string")
    ),
    json_values.filter(lambda v: bool(v) and not isinstance(v, dict)).map(
        lambda v: (ENV, with_config(runtimeConfig=v), 7, "runtimeConfig must be an object")
    ),
    json_values.filter(lambda v: v not in (None, {}) and not isinstance(v, dict)).map(
        lambda v: (ENV, with_config(ipam=v), 7, "ipam must be an object")
    ),
    json_values.filter(lambda v: not (isinstance(v, str) and v and "/" not in v)).map(
        lambda v: (ENV, with_config(ipam={"type": v}), 7, "ipam.type must be a plugin name")
    ),
    json_values.filter(lambda v: v is not None and not isinstance(v, dict)).map(
        lambda v: (ENV, with_config(prevResult=v), 7, "prevResult must be an object")
    ),
    st.just((ENV, with_config(deviceID=_DROP), 7, "no device given")),
)


@settings(max_examples=600, deadline=None)
@given(case=bad_input_cases)
def test_each_class_of_bad_input_gets_its_own_error(case: Case) -> None:
    env, stdin, code, msg = case
    err = error_of(env, stdin)
    assert (err.code, err.msg) == (code, msg), err
    assert json.dumps(err.to_json(config_version(stdin)))


env_strategy = st.one_of(
    st.dictionaries(
        st.sampled_from(
            ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]
        ),
        st.one_of(texts, st.sampled_from(["ADD", "DEL", "CHECK", "GC"])),
    ),
    *[  # mostly well-formed, so that calls get past the parser
        st.fixed_dictionaries(
            {
                "CNI_CONTAINERID": st.sampled_from(["abc123", "c1"]),
                "CNI_IFNAME": st.sampled_from(["net1", "eth1"]),
            }
        )
    ]
    * 3,
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
# Mostly well-formed calls with a few fields changed, so the rules past parsing run too.
valid_configs = st.fixed_dictionaries(
    {"cniVersion": st.sampled_from(SUPPORTED_VERSIONS), "name": st.just("n")},
    optional={
        "deviceID": st.sampled_from(["0000:00:05.0", "00:05.0", "0000:00:09.0"]),
        "device": st.sampled_from(["ens5", "nope"]),
        "hwaddr": st.sampled_from(["aa:bb:cc:dd:ee:ff"]),
        "mtu": st.integers(68, 65535),
        "ipam": st.just({"type": "host-local"}),
        "resourceName": st.just("example.com/nic"),
        "prevResult": st.just({"interfaces": [{"name": "net1"}], "ips": []}),
        "cni.dev/valid-attachments": st.just([]),
    },
)
well_formed = valid_configs.map(lambda c: json.dumps(c).encode())
stdins = st.one_of(
    st.binary(max_size=64), configs.map(lambda c: json.dumps(c).encode()), *[well_formed] * 4
)


@settings(max_examples=400, deadline=None)
@given(env=env_strategy, stdin=stdins)
def test_parser_has_no_internal_errors(env: dict, stdin: bytes) -> None:
    """Any input: parsed, or refused as the input's fault; never the parser's own crash."""
    try:
        parse_request(env, stdin)
    except CniError as exc:
        assert exc.code != ERR_INTERNAL, exc
        assert exc.msg and json.dumps(exc.to_json(config_version(stdin)))


def parser_verdict(env: dict, stdin: bytes) -> dict | None:
    """The error document the parser gives this call, or None when it accepts it."""
    try:
        parse_request(env, stdin)
    except CniError as exc:
        return exc.to_json(config_version(stdin))
    return None


def expected_answer(env: dict, stdin: bytes, netns: str) -> tuple[int, str] | None:
    """(code, msg) the rules must answer an accepted call with, or None for success, on
    a node whose only NIC is ens5 at 0000:00:05.0 and whose only pod namespace is POD.

    One entry per class, in the rules' order: a prevResult CHECK cannot use, a gone
    namespace, nothing to CHECK, no pod for a resourceName, an unknown device; and
    the commands that always succeed here."""
    request = parse_request(env, stdin)
    if request.command in ("VERSION", "DEL", "STATUS", "GC"):
        return None
    if request.command == "CHECK":  # prevResult is read before the namespace
        assert request.prev_result is not None
        try:
            parse_ipam_result(request.prev_result)
        except (ValueError, AttributeError, TypeError):
            return ERR_INVALID_CONFIG, "prevResult is malformed"
        if prev_interface(request.prev_result, request.ifname, netns) is None:
            return ERR_INVALID_CONFIG, f"prevResult has no interface {request.ifname}"
    if netns != POD:
        return ERR_UNKNOWN_CONTAINER, f"network namespace {netns} not found"
    if request.command == "CHECK":  # nothing was added
        return ERR_DEVICE_NOT_FOUND, f"{request.ifname} is not in the pod namespace"
    if request.resource_name:  # the allocation is checked first, and needs the pod's name
        return ERR_INVALID_ENV, "resourceName is set but CNI_ARGS names no pod"
    selector = request.selector
    if selector.pci_address:
        if selector.pci_address == "0000:00:05.0":
            return None
        return ERR_DEVICE_NOT_FOUND, f"no network device at PCI {selector.pci_address}"
    if selector.netdev:
        return (
            None
            if selector.netdev == "ens5"
            else (
                ERR_DEVICE_NOT_FOUND,
                f"netdev {selector.netdev} not found on the host",
            )
        )
    return ERR_DEVICE_NOT_FOUND, f"MAC {selector.hwaddr} not found on the host"


# DEL and GC are left out: valid ones would act on the host's links.
OFFLINE = Executor(Settings(sysfs_root=Path("/nonexistent"), lock_dir=Path("/nonexistent")))


@settings(max_examples=200, deadline=None)
@given(env=env_strategy, stdin=stdins, command=st.sampled_from(["ADD", "CHECK", "VERSION", "X"]))
def test_executor_on_real_ports_answers_each_class(env: dict, stdin: bytes, command: str) -> None:
    """End to end minus the kernel: a refused call gets the parser's error, unchanged; an
    accepted one the answer of its class (the namespace is not there)."""
    netns = "/nonexistent/ns"
    env = {**env, "CNI_NETNS": netns, "CNI_PATH": "/nonexistent", "CNI_COMMAND": command}
    out = OFFLINE.run(env, stdin)
    refused = parser_verdict(env, stdin)
    if refused is not None:
        assert (out.exit_code, json.loads(out.stdout)) == (1, refused)
        return
    expected = expected_answer(env, stdin, netns)
    if expected is None:
        assert (out.exit_code, json.loads(out.stdout)) == (0, version_result())
    else:
        doc = json.loads(out.stdout)
        assert (out.exit_code, doc["code"], doc["msg"]) == (1, *expected)


@settings(max_examples=300, deadline=None)
@given(
    env=env_strategy,
    stdin=stdins,
    command=st.sampled_from(["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "X"]),
    netns=st.sampled_from([POD, "/run/netns/gone"]),
)
def test_executor_on_fake_ports_answers_each_class(
    env: dict, stdin: bytes, command: str, netns: str
) -> None:
    """Every command, DEL and GC too, on in-memory ports: the answer its class of input
    calls for, never an internal error; no namespace left open; the NIC where it was unless
    an ADD succeeded."""
    env = {**env, "CNI_COMMAND": command, "CNI_NETNS": netns, "CNI_PATH": "/nonexistent"}
    env.pop("CNI_ARGS", None)  # no pod named: resourceName cannot be looked up
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        pci, _ = world.nic(5)
        before = world.kernel.state(pci)
        out = world.executor.run(env, stdin)
        assert world.kernel.open == 0
        refused = parser_verdict(env, stdin)
        if refused is not None:
            assert (out.exit_code, json.loads(out.stdout)) == (1, refused)
            assert world.kernel.state(pci) == before
            return
        expected = expected_answer(env, stdin, netns)
        if expected is None:
            assert out.exit_code == 0, out.stdout
            assert out.stdout == "" or json.loads(out.stdout)
            assert (world.kernel.state(pci) != before) is (command == "ADD")
        else:
            doc = json.loads(out.stdout)
            assert (out.exit_code, doc["code"], doc["msg"]) == (1, *expected)
            assert world.kernel.state(pci) == before
