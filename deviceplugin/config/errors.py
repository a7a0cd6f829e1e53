"""What a user reads when the config is unusable: every problem, each with its field.

pydantic reports locations and error types; this module turns them into
one line per problem, `path: what was expected, got what`, with the
selector-union tags pydantic adds taken out of paths and a "did you mean"
or "belongs in" hint for unknown keys. `ConfigError` carries the lines and
puts the file in front of each; tests and docs hold the exact wording.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from deviceplugin.config.schema import (
    ONE_SELECTOR,
    SELECTOR_LIST,
    ConfigModel,
    StrictModel,
    aliases,
    child_model,
    model_tree,
)
from deviceplugin.config.values import describe

MAX_PROBLEMS_SHOWN = 20


class ConfigError(Exception):
    """An unusable config: every problem found, each naming the file and field."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        shown = [f"{self.source}: {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN]]
        hidden = len(self.problems) - MAX_PROBLEMS_SHOWN
        if hidden > 0:
            shown.append(f"{self.source}: ... and {hidden} more problems")
        return "\n".join(shown)


def problems(error: ValidationError) -> list[str]:
    """One line per problem pydantic found, in its order."""
    return [_problem(details) for details in error.errors()]


# A key from sriovdp's first config format, which had no selector objects.
_LEGACY_KEYS: Mapping[str, str] = {
    "sriovMode": "sriovMode is from sriovdp's first config format; use selectors",
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPE_MESSAGES = {
    "list_type": "expected a list",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "model_type": "expected an object",
    "dict_type": "expected an object",
    "model_attributes_type": "expected an object",
}


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "top level"


def _model_at(loc: Sequence[int | str]) -> type[StrictModel]:
    model: type[StrictModel] = ConfigModel
    for part in loc:
        if isinstance(part, str):
            model = child_model(model, part) or model
    return model


def _unknown_key(loc: Sequence[int | str]) -> str:
    model, key = _model_at(loc[:-1]), str(loc[-1])
    known = aliases(model)
    if key in _LEGACY_KEYS:
        return f"unknown key: {_LEGACY_KEYS[key]}"
    for level, _ in model_tree():
        if level is not model and key in aliases(level):
            return f"unknown key here: {key} belongs in {level.PLACE}"
    same_case = [k for k in known if k.lower() == key.lower()]
    close = same_case or difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key: {hint}expected one of: {', '.join(known)}"


def _problem(error: ErrorDetails) -> str:
    loc = list(error["loc"])
    if "selectors" in loc:
        i = loc.index("selectors") + 1
        if i < len(loc) and loc[i] in (ONE_SELECTOR, SELECTOR_LIST):
            del loc[i]
    key_error = bool(loc) and loc[-1] == "[key]"
    if key_error:
        del loc[-1]
    kind = error["type"]
    if kind == "value_error":
        message = str(error.get("ctx", {}).get("error", error["msg"]))
    elif kind == "missing":
        message = "required key missing"
    elif kind == "extra_forbidden":
        message = _unknown_key(loc)
    elif kind == "model_type" and not loc:
        message = f"expected an object with a resourceList key, got {describe(error['input'])}"
    elif kind in _TYPE_MESSAGES:
        message = f"{_TYPE_MESSAGES[kind]}, got {describe(error['input'])}"
    elif kind == "selectors_shape":
        message = f"{error['msg']}, got {describe(error['input'])}"
    else:
        message = error["msg"]
    if key_error:
        message = f"invalid key: {message}"
    return f"{_path(loc)}: {message}"
