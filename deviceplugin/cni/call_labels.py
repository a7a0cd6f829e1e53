"""The labels one answered CNI call is counted under: its command and its result.

Pure. Both come from a fixed set, so a runtime sending odd commands, or a
new error path, cannot grow the metric's series without bound: the command
is one of the spec's commands or `other`; the result is `ok` for exit 0,
else the answer's CNI error code, if it is one that `types` defines, else
`other`. The code is read back from the answer itself, so the count says
exactly what the runtime was told.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from deviceplugin.cni import types

OK, OTHER = "ok", "other"
# Every ERR_* constant of the protocol module: the only codes the executor answers with.
ERROR_CODES = frozenset(
    value
    for name, value in vars(types).items()
    if name.startswith("ERR_") and isinstance(value, int)
)


def command_label(env: Mapping[str, str]) -> str:
    command = env.get("CNI_COMMAND", "")
    return command if command in types.COMMANDS else OTHER


def result_label(exit_code: int, stdout: str) -> str:
    """`ok`, or the error code of the CNI error object the plugin printed."""
    if exit_code == 0:
        return OK
    try:
        code = json.loads(stdout).get("code")
    except (ValueError, AttributeError):
        return OTHER
    return str(code) if type(code) is int and code in ERROR_CODES else OTHER


def call_labels(env: Mapping[str, str], exit_code: int, stdout: str) -> tuple[str, str]:
    """(command, result) of one answered call."""
    return command_label(env), result_label(exit_code, stdout)
