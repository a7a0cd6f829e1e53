"""Reading a config file: bytes to decoded data, JSON or YAML, then `parse_config`.

A decoding problem is a `ConfigError` like any other, with the line and
column the parser reports. YAML is read with every scalar kept as a string
except booleans and null, so unquoted ids such as `8086` or `0x1af4` mean
what they look like, and duplicate keys are errors in both formats (the
second one would otherwise silently win). PyYAML is imported only for a
file read as YAML: a JSON config (sriovdp's ConfigMap key is `config.json`)
or the built-in one do not load it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from deviceplugin.config.convert import Config, parse_config
from deviceplugin.config.errors import ConfigError


@functools.cache
def _yaml_loader() -> Any:
    """A PyYAML SafeLoader where only booleans and null are typed and duplicate keys are
    errors; built (and PyYAML imported) on the first YAML file."""
    import yaml

    class _YamlLoader(yaml.SafeLoader):
        """PyYAML would read `8086` as a number and `0x1af4` as 6900; keeping scalars
        as strings lets the id rules see what the user typed."""

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if (
                    isinstance(key_node, yaml.ScalarNode)
                    and key_node.tag != "tag:yaml.org,2002:merge"
                ):
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping",
                            node.start_mark,
                            f"found duplicate key {key_node.value!r}",
                            key_node.start_mark,
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    _YamlLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag in _TYPED_YAML_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return _YamlLoader


_TYPED_YAML_TAGS = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:merge"}


class _DuplicateKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _decode(text: str, source: str, suffix: str) -> object:
    if not text.strip():
        raise ConfigError(source, ["the file is empty: expected an object with a resourceList"])
    as_json = suffix == ".json" or (
        suffix not in (".yaml", ".yml") and text.lstrip().startswith(("{", "["))
    )
    try:
        if as_json:
            return json.loads(text, object_pairs_hook=_json_object)
        return _decode_yaml(text)
    except json.JSONDecodeError as e:
        problem = f"line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}"
    except _DuplicateKeyError as e:
        problem = f"invalid JSON: duplicate key {e.key!r}"
    except _YamlProblem as e:
        problem = str(e)
    except RecursionError:
        problem = "nested too deeply"
    raise ConfigError(source, [problem])


class _YamlProblem(Exception):
    """PyYAML's error, worded for the user (PyYAML's classes exist only once it is imported)."""


def _decode_yaml(text: str) -> object:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise _YamlProblem(f"{where}invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise _YamlProblem(f"invalid YAML: {e}") from None


def load_config(path: Path) -> Config:
    """Read, decode (JSON or YAML) and validate a config file; raises ConfigError.

    `.json` is read as JSON, `.yaml`/`.yml` as YAML, anything else as JSON when
    it starts with `{` or `[` (sriovdp's ConfigMap key is `config.json`).
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(source, [f"cannot read the file: {e.strerror or e}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(source, [f"not UTF-8 text (bad byte at offset {e.start})"]) from None
    return parse_config(_decode(text, source, path.suffix.lower()), source)
