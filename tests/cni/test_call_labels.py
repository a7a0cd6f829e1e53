"""The labels a CNI call is counted under stay in a fixed set, whatever the call said."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from deviceplugin.cni import types
from deviceplugin.cni.call_labels import ERROR_CODES, OK, OTHER, call_labels
from deviceplugin.cni.types import ERR_DEVICE_BUSY, ERR_IPAM, CniError


def error(code: int) -> str:
    return json.dumps(CniError(code, "failed").to_json())


def test_a_success_is_ok_and_a_failure_is_its_code() -> None:
    assert call_labels({"CNI_COMMAND": "ADD"}, 0, '{"cniVersion": "1.1.0"}') == ("ADD", OK)
    assert call_labels({"CNI_COMMAND": "DEL"}, 0, "") == ("DEL", OK)
    assert call_labels({"CNI_COMMAND": "ADD"}, 1, error(ERR_IPAM)) == ("ADD", "104")
    assert call_labels({"CNI_COMMAND": "CHECK"}, 1, error(ERR_DEVICE_BUSY)) == ("CHECK", "101")


def test_what_is_not_known_is_other() -> None:
    assert call_labels({}, 1, error(ERR_IPAM)) == (OTHER, "104")
    assert call_labels({"CNI_COMMAND": "add"}, 0, "") == (OTHER, OK)
    assert call_labels({"CNI_COMMAND": "ADD"}, 1, error(4242)) == ("ADD", OTHER)
    assert call_labels({"CNI_COMMAND": "ADD"}, 1, "not json") == ("ADD", OTHER)
    assert call_labels({"CNI_COMMAND": "ADD"}, 1, "[104]") == ("ADD", OTHER)
    assert call_labels({"CNI_COMMAND": "ADD"}, 1, '{"code": "104"}') == ("ADD", OTHER)
    assert call_labels({"CNI_COMMAND": "ADD"}, 1, '{"code": true}') == ("ADD", OTHER)


def test_every_code_the_protocol_defines_is_its_own_result() -> None:
    assert {1, 3, 4, 6, 7, 50, 100, 101, 102, 103, 104, 105, 106, 199} <= ERROR_CODES
    for code in ERROR_CODES:
        assert call_labels({"CNI_COMMAND": "ADD"}, 1, error(code)) == ("ADD", str(code))


@given(
    st.dictionaries(st.just("CNI_COMMAND"), st.text(max_size=10)),
    st.integers(-5, 300),
    st.one_of(st.text(max_size=40), st.integers().map(error)),
)
def test_labels_come_from_a_fixed_set(env: dict[str, str], exit_code: int, out: str) -> None:
    command, result = call_labels(env, exit_code, out)
    assert command in {*types.COMMANDS, OTHER}
    assert result in {OK, OTHER} | {str(c) for c in ERROR_CODES}
