"""The config file: sriovdp compatibility, normalisation, errors a user can act on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deviceplugin.allocation import env_var_name
from deviceplugin.config import (
    DEFAULT_RESOURCE_PREFIX,
    ConfigError,
    KeySupport,
    config_keys,
    config_to_dict,
    default_config,
    format_pf_ref,
    load_config,
    normalise_pci_address,
    normalise_pci_id,
    parse_config,
    parse_pf_name,
    parse_root_device,
)
from deviceplugin.pools import DeviceType, PfRef, Selector

SOURCE = "/etc/netdp/config.json"


def one(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resourceList": [resource]}


def errors(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SOURCE)
    assert info.value.source == SOURCE
    text = str(info.value)
    assert all(line.startswith(f"{SOURCE}: ") for line in text.splitlines())
    return [line.removeprefix(f"{SOURCE}: ") for line in text.splitlines()]


# --- sriovdp configs ---------------------------------------------------------

# The shapes of the examples in sriovdp's README "Config parameters": list and
# object selector syntax, resourcePrefix override, pfNames/rootDevices ranges,
# additionalInfo. Features netdp refuses are tested separately below.
SRIOVDP_STYLE = {
    "resourceList": [
        {
            "resourceName": "intel_sriov_netdevice",
            "selectors": [
                {
                    "vendors": ["8086"],
                    "devices": ["154c", "10ed", "1889"],
                    "drivers": ["i40evf", "ixgbevf", "iavf"],
                }
            ],
        },
        {
            "resourceName": "intel_sriov_dpdk",
            "resourcePrefix": "intel.com",
            "selectors": [
                {
                    "vendors": ["8086"],
                    "devices": ["154c", "10ed", "1889"],
                    "drivers": ["vfio-pci"],
                    "pfNames": ["enp0s0f0", "enp2s2f1"],
                }
            ],
        },
        {
            "resourceName": "infiniband_netdevs",
            "selectors": [{"linkTypes": ["infiniband"], "isRdma": False}],
        },
        {
            "resourceName": "netdevice_additional_env",
            "selectors": [{"vendors": ["8086"], "devices": ["154c"]}],
            "additionalInfo": {
                "*": {"token": "3e49019f"},
                "0000:86:00.0": {"additional-token": "6e7dc135"},
            },
        },
        {
            "resourceName": "brcm_sriov_bnxt",
            "resourcePrefix": "broadcom.com",
            "excludeTopology": True,
            "selectors": [{"vendors": ["14e4"], "devices": ["1750"], "drivers": ["bnxt_en"]}],
        },
        {
            "resourceName": "ranges",
            "selectors": [
                {"pfNames": ["netpf0#0,2-7,9"]},
                {"rootDevices": ["0000:86:00.0#0-1,3,4"]},
            ],
        },
        {
            "resourceName": "old_selectors_syntax_example",
            "selectors": {
                "vendors": ["8086"],
                "devices": ["154c", "10ed", "1889"],
                "drivers": ["i40evf", "ixgbevf", "iavf"],
            },
        },
    ]
}


def test_sriovdp_style_config_parses() -> None:
    config = parse_config(SRIOVDP_STYLE, SOURCE)
    assert [p.resource_name for p in config.pools] == [
        "intel.com/intel_sriov_netdevice",
        "intel.com/intel_sriov_dpdk",
        "intel.com/infiniband_netdevs",
        "intel.com/netdevice_additional_env",
        "broadcom.com/brcm_sriov_bnxt",
        "intel.com/ranges",
        "intel.com/old_selectors_syntax_example",
    ]
    assert config.warnings == ()
    first, dpdk, ib, info, brcm, ranges, old = config.pools
    assert first.selectors == (
        Selector(
            vendors=("8086",),
            devices=("154c", "10ed", "1889"),
            drivers=("i40evf", "ixgbevf", "iavf"),
        ),
    )
    assert first.device_type is DeviceType.NET_DEVICE
    assert dpdk.selectors[0].pf_names == (PfRef("enp0s0f0"), PfRef("enp2s2f1"))
    assert ib.selectors == (Selector(link_types=("infiniband",)),)
    assert info.additional_info == {
        "*": {"token": "3e49019f"},
        "0000:86:00.0": {"additional-token": "6e7dc135"},
    }
    assert brcm.exclude_topology and not first.exclude_topology
    assert ranges.selectors == (
        Selector(pf_names=(PfRef("netpf0", (range(0, 1), range(2, 8), range(9, 10))),)),
        Selector(root_devices=(PfRef("0000:86:00.0", (range(0, 2), range(3, 4), range(4, 5))),)),
    )
    assert old.selectors == first.selectors
    assert all(p.pf_link_health and not p.allow_default_route for p in config.pools)


def test_sriovdp_features_netdp_cannot_honour_are_refused_by_name() -> None:
    data = {
        "resourceList": [
            {"resourceName": "rdma", "selectors": [{"vendors": ["15b3"], "isRdma": True}]},
            {"resourceName": "vhost", "selectors": [{"needVhostNet": True}]},
            {"resourceName": "vdpa", "selectors": [{"vdpaType": "vhost"}]},
            {"resourceName": "fpga", "deviceType": "accelerator", "selectors": [{}]},
            {
                "resourceName": "bf2_sf",
                "deviceType": "auxNetDevice",
                "selectors": [{"pfNames": ["p0#1-5"], "auxTypes": ["sf"]}],
            },
            {"resourceName": "ddp", "selectors": [{"ddpProfiles": ["GTPv1-C/U"]}]},
            {"resourceName": "pkeys", "selectors": [{"pKeys": ["0x1"]}]},
            {"resourceName": "acpi", "selectors": [{"acpiIndexes": ["101"]}]},
        ]
    }
    found = errors(data)
    expected_paths = [
        "resourceList[0].selectors[0].isRdma",
        "resourceList[1].selectors[0].needVhostNet",
        "resourceList[2].selectors[0].vdpaType",
        "resourceList[3].deviceType",
        "resourceList[4].deviceType",
        "resourceList[4].selectors[0].auxTypes",
        "resourceList[5].selectors[0].ddpProfiles",
        "resourceList[6].selectors[0].pKeys",
        "resourceList[7].selectors[0].acpiIndexes",
    ]
    assert [line.split(": ")[0] for line in found] == expected_paths
    assert all("not supported by netdp" in line for line in found)


def test_refused_features_are_accepted_with_their_default_values() -> None:
    selector = {
        "isRdma": False,
        "needVhostNet": False,
        "vdpaType": None,
        "ddpProfiles": [],
        "pKeys": None,
        "acpiIndexes": [],
        "auxTypes": [],
    }
    config = parse_config(one({"resourceName": "x", "selectors": [selector]}), SOURCE)
    assert config.pools[0].selectors == (Selector(),)


def test_default_prefix_is_sriovdps() -> None:
    assert DEFAULT_RESOURCE_PREFIX == "intel.com"
    config = parse_config(one({"resourceName": "x", "selectors": {}}), SOURCE)
    assert config.pools[0].resource_name == "intel.com/x"


def test_netdp_additions() -> None:
    config = parse_config(
        one(
            {
                "resourceName": "dpdk",
                "resourcePrefix": "example.com",
                "deviceType": "vfio-pci",
                "allowDefaultRoute": True,
                "pfLinkHealth": False,
                "selectors": [{"vendors": ["8086"]}],
            }
        ),
        SOURCE,
    )
    (spec,) = config.pools
    assert spec.device_type is DeviceType.VFIO_PCI
    assert spec.allow_default_route
    assert not spec.pf_link_health


def test_default_config() -> None:
    config = default_config()
    (spec,) = config.pools
    assert spec.resource_name == "kernel.org/virt"
    assert spec.selectors == (
        Selector(vendors=("1af4",), devices=("1000", "1041"), drivers=("virtio-pci",)),
    )
    assert not spec.allow_default_route
    assert env_var_name(spec.resource_name) == "PCIDEVICE_KERNEL_ORG_VIRT"
    assert config.warnings == ()


# --- normalisation -------------------------------------------------------------


@pytest.mark.parametrize("text", ["0x1af4", "0X1AF4", "1AF4", "1af4"])
def test_pci_ids_are_normalised(text: str) -> None:
    assert normalise_pci_id(text) == "1af4"


@pytest.mark.parametrize("text", ["", "1af", "01af4", "0x", "xyzw", " 1af4", "1af4\n", "١٢٣٤"])
def test_bad_pci_ids(text: str) -> None:
    with pytest.raises(ValueError, match="is not a PCI id: expected 4 hex digits"):
        normalise_pci_id(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0000:03:02.0", "0000:03:02.0"),
        ("03:02.0", "0000:03:02.0"),
        ("0000:3B:1F.7", "0000:3b:1f.7"),
        ("10000:00:00.0", "10000:00:00.0"),
    ],
)
def test_pci_addresses_are_normalised(text: str, expected: str) -> None:
    assert normalise_pci_address(text) == expected


@pytest.mark.parametrize("text", ["0000:03:02", "0000:03:20.0", "0000:03:02.8", "3:2.0", "x"])
def test_bad_pci_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a PCI address"):
        normalise_pci_address(text)


def test_pf_name_entries() -> None:
    assert parse_pf_name("ens1f0") == PfRef("ens1f0")
    assert parse_pf_name("ens1f0#0-3,6") == PfRef("ens1f0", (range(0, 4), range(6, 7)))
    assert parse_root_device("86:00.0#1") == PfRef("0000:86:00.0", (range(1, 2),))
    assert format_pf_ref(PfRef("ens1f0", (range(0, 4), range(6, 7)))) == "ens1f0#0-3,6"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("ens1f0#", "expected VF indexes after '#'"),
        ("ens1f0#1#2", "more than one '#'"),
        ("ens1f0#3-1", "ends before it starts"),
        ("ens1f0#1,", "is not a VF index or range"),
        ("ens1f0#a-b", "is not a VF index or range"),
        ("ens1f0#1-2-3", "is not a VF index or range"),
        ("ens1f0#70000", "exceeds 65535"),
        ("ens1f0#99999999999999999999999", "exceeds 65535"),
        ("#0-3", "is not a network interface name"),
        ("a-very-long-interface-name", "is not a network interface name"),
        ("bad name", "is not a network interface name"),
    ],
)
def test_bad_pf_name_entries(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_pf_name(text)


def test_bad_root_device_entry_names_the_entry() -> None:
    with pytest.raises(ValueError, match=r"'86:00#1': '86:00' is not a PCI address"):
        parse_root_device("86:00#1")


def test_values_are_normalised_in_pools() -> None:
    config = parse_config(
        one(
            {
                "resourceName": "x",
                "selectors": {
                    "vendors": ["0x8086"],
                    "devices": ["154C"],
                    "pciAddresses": ["3b:02.0"],
                    "rootDevices": ["0000:3B:00.0"],
                    "linkTypes": ["Ether"],
                },
            }
        ),
        SOURCE,
    )
    assert config.pools[0].selectors[0] == Selector(
        vendors=("8086",),
        devices=("154c",),
        pci_addresses=("0000:3b:02.0",),
        root_devices=(PfRef("0000:3b:00.0"),),
        link_types=("ether",),
    )


# --- resource names ------------------------------------------------------------


@pytest.mark.parametrize("name", ["sriov_net_A", "a", "my-nic", "nic.v2", "A" * 63, "x_1-2.3"])
def test_valid_resource_names(name: str) -> None:
    parse_config(one({"resourceName": name, "selectors": {}}), SOURCE)


def test_invalid_resource_name_message() -> None:
    assert errors(one({"resourceName": "Kernel Virt", "selectors": {}})) == [
        "resourceList[0].resourceName: 'Kernel Virt' is not a valid resource name: expected a "
        "qualified name of at most 63 characters (letters, digits, '-', '_' and '.', starting "
        "and ending with a letter or digit), e.g. 'sriov_net_a'"
    ]


@pytest.mark.parametrize("name", ["", "-x", "x-", "_x", "a" * 64, "a b", "ü"])
def test_invalid_resource_names(name: str) -> None:
    (line,) = errors(one({"resourceName": name, "selectors": {}}))
    assert line.startswith("resourceList[0].resourceName: ")
    assert "is not a valid resource name" in line


def test_a_prefix_in_the_resource_name_is_pointed_at_resource_prefix() -> None:
    (line,) = errors(one({"resourceName": "example.com/x", "selectors": {}}))
    assert "put the part before '/' in resourcePrefix" in line


@pytest.mark.parametrize(
    ("prefix", "complaint"),
    [
        ("Example.com", "expected a DNS subdomain"),
        ("example..com", "expected a DNS subdomain"),
        ("-example.com", "expected a DNS subdomain"),
        ("a" * 245, "at most 244 characters"),
        ("kubernetes.io", "reserved for Kubernetes' own resources"),
        ("x.kubernetes.io", "reserved for Kubernetes' own resources"),
        ("requests.example.com", "reserved for resource quotas"),
    ],
)
def test_invalid_resource_prefixes(prefix: str, complaint: str) -> None:
    (line,) = errors(one({"resourceName": "x", "resourcePrefix": prefix, "selectors": {}}))
    assert line.startswith("resourceList[0].resourcePrefix: ")
    assert complaint in line


def test_longest_prefix_is_accepted() -> None:
    labels = ".".join(["a" * 60] * 3 + ["b" * 61])
    assert len(labels) == 244
    parse_config(one({"resourceName": "x", "resourcePrefix": labels, "selectors": {}}), SOURCE)


def test_duplicate_resource_names_are_refused() -> None:
    data = {
        "resourceList": [
            {"resourceName": "x", "selectors": {}},
            {"resourceName": "x", "resourcePrefix": "example.com", "selectors": {}},
            {"resourceName": "x", "resourcePrefix": "intel.com", "selectors": {}},
        ]
    }
    assert errors(data) == [
        "resourceList[2].resourceName: resource intel.com/x is already defined by resourceList[0]"
    ]


def test_resource_names_giving_the_same_env_var_are_refused() -> None:
    data = {
        "resourceList": [
            {"resourceName": "nic", "resourcePrefix": "example.com", "selectors": {}},
            {"resourceName": "NIC", "resourcePrefix": "example.com", "selectors": {}},
        ]
    }
    assert errors(data) == [
        "resourceList[1].resourceName: resource example.com/NIC gets the env var "
        "PCIDEVICE_EXAMPLE_COM_NIC, as example.com/nic (resourceList[0]) does; a container "
        "given both would lose one"
    ]


# --- errors and warnings -----------------------------------------------------------


def test_errors_name_every_field_path_and_the_expectation() -> None:
    data = {
        "resourceList": [
            {"resourceName": "ok", "selectors": {}},
            {
                "resourceName": "x",
                "selectors": {"vendors": [8086, "zz"], "pciAddresses": ["0000:03:02"]},
            },
        ]
    }
    assert errors(data) == [
        "resourceList[1].selectors.vendors[0]: expected a string (put it in quotes), "
        "got the number 8086",
        "resourceList[1].selectors.vendors[1]: 'zz' is not a PCI id: expected 4 hex digits, "
        "e.g. '8086' or '0x8086'",
        "resourceList[1].selectors.pciAddresses[0]: '0000:03:02' is not a PCI address: "
        "expected domain:bus:device.function in hex, e.g. '0000:03:02.0' (or '03:02.0')",
    ]


def test_list_selector_paths_have_the_selector_index() -> None:
    data = one({"resourceName": "x", "selectors": [{}, {"pfNames": ["ens1f0#9-1"]}]})
    assert errors(data) == [
        "resourceList[0].selectors[1].pfNames[0]: 'ens1f0#9-1': range '9-1' ends before it starts"
    ]


def test_unknown_keys_are_refused_with_a_suggestion() -> None:
    data = {
        "resourceList": [
            {"resourceName": "x", "selector": {"vendor": ["8086"]}},
            {"ResourceName": "y", "selectors": {"pfNames": ["a"], "pciAddress": []}},
        ],
        "resourcePrefix": "example.com",
    }
    found = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in errors(data)}
    assert found == {
        "resourceList[0].selectors": "required key missing",
        "resourceList[0].selector": "unknown key: did you mean 'selectors'? expected one of: "
        "resourceName, resourcePrefix, deviceType, selectors, excludeTopology, additionalInfo, "
        "allowDefaultRoute, pfLinkHealth",
        "resourceList[1].resourceName": "required key missing",
        "resourceList[1].ResourceName": found["resourceList[1].ResourceName"],
        "resourceList[1].selectors.pciAddress": found["resourceList[1].selectors.pciAddress"],
        "resourcePrefix": "unknown key here: resourcePrefix belongs in the objects of resourceList",
    }
    assert found["resourceList[1].ResourceName"].startswith(
        "unknown key: did you mean 'resourceName'?"
    )
    assert found["resourceList[1].selectors.pciAddress"].startswith(
        "unknown key: did you mean 'pciAddresses'? expected one of: vendors, devices"
    )


def test_selector_keys_at_the_resource_level_are_pointed_at_selectors() -> None:
    data = one({"resourceName": "x", "isRdma": True, "sriovMode": True, "selectors": {}})
    assert errors(data) == [
        "resourceList[0].isRdma: unknown key here: isRdma belongs in the selector objects",
        "resourceList[0].sriovMode: unknown key: sriovMode is from sriovdp's first config "
        "format; use selectors",
    ]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([], "top level: expected an object with a resourceList key, got a list"),
        ({}, "resourceList: required key missing"),
        ({"resourceList": {}}, "resourceList: expected a list, got an object"),
        ({"resourceList": [1]}, "resourceList[0]: expected an object, got the number 1"),
        (
            one({"resourceName": "x", "selectors": "vendors"}),
            "resourceList[0].selectors: expected a selector object or a list of selector "
            "objects, got the string 'vendors'",
        ),
        (
            one({"resourceName": "x", "selectors": []}),
            "resourceList[0].selectors: expected at least one selector object "
            "({} selects every device)",
        ),
        (
            one({"resourceName": "x", "selectors": [[]]}),
            "resourceList[0].selectors[0]: expected an object, got a list",
        ),
        (
            one({"resourceName": "x", "selectors": {"resourceName": "y"}}),
            "resourceList[0].selectors.resourceName: unknown key here: resourceName belongs in "
            "the objects of resourceList",
        ),
        (
            one({"resourceName": "x", "selectors": {}, "excludeTopology": "true"}),
            "resourceList[0].excludeTopology: expected true or false, got the string 'true'",
        ),
        (
            one({"resourceName": "x", "selectors": {}, "deviceType": "vfio"}),
            "resourceList[0].deviceType: unknown deviceType 'vfio': expected one of: "
            "netDevice, vfio-pci",
        ),
        (
            one({"resourceName": "x", "selectors": {"vendors": "8086"}}),
            "resourceList[0].selectors.vendors: expected a list, got the string '8086'",
        ),
        (
            one({"resourceName": "x", "selectors": {}, "additionalInfo": {"0000:86:00": {}}}),
            "resourceList[0].additionalInfo[\"0000:86:00\"]: invalid key: '0000:86:00' is not a "
            "PCI address: expected domain:bus:device.function in hex, e.g. '0000:03:02.0' "
            "(or '03:02.0'); or '*' for every device",
        ),
    ],
)
def test_structural_errors(data: object, expected: str) -> None:
    assert errors(data) == [expected]


def test_many_problems_are_cut_short() -> None:
    data = one({"resourceName": "x", "selectors": {"vendors": ["bad"] * 30}})
    found = errors(data)
    assert len(found) == 21
    assert found[-1] == "... and 10 more problems"
    with pytest.raises(ConfigError) as info:
        parse_config(data, SOURCE)
    assert len(info.value.problems) == 30


def test_warnings() -> None:
    data = {
        "resourceList": [
            {
                "resourceName": "my-nic",
                "resourcePrefix": "kernel.org",
                "selectors": [{"pciAddresses": [], "linkTypes": ["eth", "arphrd-32"]}],
            }
        ]
    }
    assert parse_config(data, SOURCE).warnings == (
        "resource kernel.org/my-nic: env var PCIDEVICE_KERNEL_ORG_MY-NIC cannot be read by a "
        "shell (contains '-')",
        "resource kernel.org/my-nic: resourceList[0].selectors[0].linkTypes: 'eth' is not a "
        "link type netdp reports (ether, infiniband, arphrd-<number>), so it matches no device",
        "resource kernel.org/my-nic: resourceList[0].selectors[0].pciAddresses is an empty "
        "list, which does not constrain the selection (as in sriovdp)",
    )
    assert parse_config({"resourceList": []}, SOURCE).warnings == (
        "resourceList is empty: no pool will be registered",
    )


# --- files ------------------------------------------------------------------------


def test_load_json_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SRIOVDP_STYLE))
    config = load_config(path)
    assert config.source == str(path)
    assert config.pools == parse_config(SRIOVDP_STYLE, SOURCE).pools


def test_load_yaml_keeps_unquoted_ids_as_typed(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        """
resourceList:
  - resourceName: virt
    resourcePrefix: kernel.org
    excludeTopology: true
    selectors:
      - vendors: [0x1af4, 8086]
        devices: [1000, 1041]
        pciAddresses: [0000:00:04.0]
        pfNames: [ens1f0#0-3]
"""
    )
    (spec,) = load_config(path).pools
    assert spec.exclude_topology
    assert spec.selectors == (
        Selector(
            vendors=("1af4", "8086"),
            devices=("1000", "1041"),
            pci_addresses=("0000:00:04.0",),
            pf_names=(PfRef("ens1f0", (range(0, 4),)),),
        ),
    )


def test_a_file_without_suffix_is_sniffed(tmp_path: Path) -> None:
    as_json = tmp_path / "json"
    as_json.write_text(json.dumps(one({"resourceName": "x", "selectors": {}})))
    as_yaml = tmp_path / "yaml"
    as_yaml.write_text("resourceList:\n- resourceName: x\n  selectors: {}\n")
    assert load_config(as_json).pools == load_config(as_yaml).pools


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "c.json",
            '{\n  "resourceList": [\n    {"resourceName": "x",}\n  ]\n}',
            "line 3, column 26: invalid JSON: ",
        ),
        (
            "c.json",
            '{"resourceList": [], "resourceList": []}',
            "invalid JSON: duplicate key 'resourceList'",
        ),
        ("c.yaml", "resourceList:\n  - resourceName: [x\n", "line 3, column 1: invalid YAML: "),
        (
            "c.yaml",
            "resourceList: []\nresourceList: []\n",
            "line 2, column 1: invalid YAML: found duplicate key 'resourceList'",
        ),
        ("c.json", "  \n", "the file is empty"),
        pytest.param("c.json", "[" * 100_000, "nested too deeply", id="deep-json"),
    ],
)
def test_unparsable_files(tmp_path: Path, name: str, content: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {expected}")


def test_deeply_nested_yaml_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match=r"nested too deeply|invalid YAML|expected an object"):
        load_config(path)


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(missing))}: cannot read the file: "):
        load_config(missing)
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path)
    binary = tmp_path / "c.json"
    binary.write_bytes(b'{"resourceList": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(binary)


def test_validation_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(one({"resourceName": "Kernel Virt", "selectors": {}})))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"{path}: resourceList[0].resourceName: 'Kernel Virt' is not a valid resource name"
    )


# --- documentation ---------------------------------------------------------------


def test_config_keys_enumerate_every_accepted_key() -> None:
    keys = {k.path: k for k in config_keys()}
    assert len(keys) == len(config_keys())
    assert keys["resourceList"].default == "required"
    assert keys["resourceList[].resourcePrefix"].default == "null"
    assert keys["resourceList[].deviceType"].default == '"netDevice"'
    assert keys["resourceList[].pfLinkHealth"].default == "true"
    assert keys["resourceList[].allowDefaultRoute"].support is KeySupport.NETDP
    assert keys["resourceList[].selectors[].isRdma"].support is KeySupport.DEFAULT_ONLY
    assert keys["resourceList[].selectors[].pfNames"].support is KeySupport.HONOURED
    assert all(k.description and k.type for k in keys.values())
    # Every documented selector key is accepted, and nothing else.
    selector_keys = {
        p.rsplit(".", 1)[1] for p in keys if p.startswith("resourceList[].selectors[].")
    }
    everything = dict.fromkeys(selector_keys, None)
    parse_config(one({"resourceName": "x", "selectors": everything}), SOURCE)


# --- properties ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
SELECTOR_KEYS = [k.path.rsplit(".", 1)[1] for k in config_keys() if "selectors[]." in k.path]
RESOURCE_KEYS = [k.path.split(".", 1)[1] for k in config_keys() if k.path.count(".") == 1]
near_strings = st.sampled_from(
    ["8086", "0x1af4", "ens1f0#0-3", "0000:3b:00.0#1", "ether", "x#", "", "a/b", "vfio-pci", "*"]
) | st.text(max_size=12)
leaf = json_values | near_strings | st.lists(near_strings | json_values, max_size=3)
near_selectors = st.dictionaries(
    st.sampled_from(SELECTOR_KEYS) | st.text(max_size=8), leaf, max_size=5
)
near_resources = st.dictionaries(
    st.sampled_from(RESOURCE_KEYS),
    leaf | near_selectors | st.lists(near_selectors, max_size=3),
    max_size=6,
)
near_configs = st.dictionaries(
    st.sampled_from(["resourceList", "resourceLists"]),
    st.lists(near_resources | json_values, max_size=3),
    max_size=2,
)


@given(json_values | near_configs)
def test_parse_config_raises_only_config_errors(data: object) -> None:
    try:
        config = parse_config(data, SOURCE)
    except ConfigError as e:
        assert e.problems
        assert all(line.startswith(f"{SOURCE}: ") for line in str(e).splitlines())
    else:
        assert len({p.resource_name for p in config.pools}) == len(config.pools)


@given(st.text(max_size=30))
def test_pf_name_parser_raises_only_value_errors(text: str) -> None:
    try:
        ref = parse_pf_name(text)
    except ValueError:
        return
    assert parse_pf_name(format_pf_ref(ref)) == ref


ifnames = st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True)
vf_ranges = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 20)).map(lambda t: range(t[0], t[0] + t[1] + 1)),
    min_size=1,
    max_size=4,
).map(tuple)
pf_refs = st.builds(PfRef, ifnames, st.none() | vf_ranges)
qualified = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True)
subdomains = st.from_regex(
    r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True
)
ids = st.from_regex(r"(0x)?[0-9a-fA-F]{4}", fullmatch=True)
valid_selectors = st.fixed_dictionaries(
    {},
    optional={
        "vendors": st.lists(ids, min_size=1, max_size=3),
        "devices": st.lists(ids, min_size=1, max_size=3),
        "drivers": st.lists(st.sampled_from(["iavf", "vfio-pci", "mlx5_core"]), min_size=1),
        "pciAddresses": st.lists(st.sampled_from(["0000:3b:02.0", "3b:02.1"]), min_size=1),
        "pfNames": st.lists(pf_refs.map(format_pf_ref), min_size=1, max_size=3),
        "rootDevices": st.lists(st.sampled_from(["0000:3b:00.0", "0000:86:00.1#0-3"]), min_size=1),
        "linkTypes": st.lists(st.sampled_from(["ether", "infiniband"]), min_size=1),
    },
)
valid_resources = st.fixed_dictionaries(
    {
        "resourceName": qualified,
        "selectors": valid_selectors | st.lists(valid_selectors, min_size=1, max_size=3),
    },
    optional={
        "resourcePrefix": subdomains,
        "deviceType": st.sampled_from(["netDevice", "vfio-pci"]),
        "excludeTopology": st.booleans(),
        "allowDefaultRoute": st.booleans(),
        "pfLinkHealth": st.booleans(),
        "additionalInfo": st.dictionaries(
            st.sampled_from(["*", "0000:3b:02.0"]),
            st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
        ),
    },
)


@given(st.lists(valid_resources, max_size=4))
def test_valid_configs_round_trip(resources: list[dict[str, Any]]) -> None:
    try:
        config = parse_config({"resourceList": resources}, SOURCE)
    except ConfigError as e:
        # Generated names may collide, or fall in the kubernetes.io domain; nothing else.
        assert all(
            "already defined" in p
            or "gets the env var" in p
            or "kubernetes.io" in p
            or "requests." in p
            for p in e.problems
        ), e.problems
        return
    again = parse_config(json.loads(json.dumps(config_to_dict(config))), SOURCE)
    assert again.pools == config.pools


@given(qualified, subdomains)
def test_env_var_names_of_valid_resources_are_valid_for_the_kubelet(name: str, prefix: str) -> None:
    try:
        config = parse_config(
            one({"resourceName": name, "resourcePrefix": prefix, "selectors": {}}), SOURCE
        )
    except ConfigError:
        return
    env = env_var_name(config.pools[0].resource_name)
    assert re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", env)
    assert ("-" in env) == any("cannot be read by a shell" in w for w in config.warnings)
