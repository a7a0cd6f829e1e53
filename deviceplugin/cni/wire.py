"""netdp-cni/2: what the ehost-device forwarder and the daemon say over the CNI socket.

One request and one response per connection. Each message starts with a
header line that gives its lengths, so neither side can take a cut-off
message for a whole one (netdp-cni/1 ended the answer by closing the socket,
and half an answer with a complete first line looked like a whole one):

    request   b"netdp-cni/2 <env bytes> <stdin bytes>\\n"
              + b"KEY=VALUE\\0" for each CNI_* variable + stdin
    response  b"netdp-cni/2 <exit code> <stdout bytes>\\n" + stdout

The numbers are plain decimal without leading zeros. The forwarder is
`forwarder/ehost-device.c`; this module is the daemon's half (and the tests'
client), pure functions over bytes: the sockets are `server.py`'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

PROTOCOL = b"netdp-cni/2"
DEFAULT_SOCKET = "/run/netdp/cni.sock"
SOCKET_ENV = "NETDP_CNI_SOCKET"  # read by the forwarder only; tests point it elsewhere
MAX_HEADER = 64
MAX_ENV = 1 << 20
MAX_STDIN = 16 << 20
MAX_STDOUT = 16 << 20
_HEADER = re.compile(rb"netdp-cni/2 (0|[1-9][0-9]{0,8}) (0|[1-9][0-9]{0,8})\n")


class WireError(ValueError):
    """Bytes that are not a netdp-cni/2 message."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What the first line of a request announces."""

    env_bytes: int
    stdin_bytes: int

    @property
    def body_bytes(self) -> int:
        return self.env_bytes + self.stdin_bytes


def _header(line: bytes) -> tuple[int, int]:
    match = _HEADER.fullmatch(line) if len(line) <= MAX_HEADER else None
    if match is None:
        raise WireError(f"not a netdp-cni/2 header: {line[:MAX_HEADER]!r}")
    return int(match[1]), int(match[2])


def parse_request_head(line: bytes) -> RequestHead:
    """The request's header line, newline included; `WireError` unless it is one in bounds."""
    env_bytes, stdin_bytes = _header(line)
    if env_bytes > MAX_ENV:
        raise WireError(f"CNI_* variables of {env_bytes} bytes, more than {MAX_ENV}")
    if stdin_bytes > MAX_STDIN:
        raise WireError(f"network config of {stdin_bytes} bytes, more than {MAX_STDIN}")
    return RequestHead(env_bytes, stdin_bytes)


def decode_env(block: bytes) -> dict[str, str]:
    """`KEY=VALUE\\0` entries; undecodable bytes become U+FFFD, never an exception."""
    if block and not block.endswith(b"\0"):
        raise WireError("the CNI_* variables do not end with NUL")
    env = {}
    for item in block.split(b"\0")[:-1]:
        key, sep, value = item.partition(b"=")
        if not sep or not key.startswith(b"CNI_"):
            raise WireError(f"not a CNI_* variable: {item[:64]!r}")
        env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def split_request(head: RequestHead, body: bytes) -> tuple[dict[str, str], bytes]:
    """(CNI_* variables, stdin) from the `head.body_bytes` bytes after the header."""
    if len(body) != head.body_bytes:
        raise WireError(f"request body of {len(body)} bytes, announced {head.body_bytes}")
    return decode_env(body[: head.env_bytes]), body[head.env_bytes :]


def encode_request(env: Mapping[str, str], stdin: bytes) -> bytes:
    """What the forwarder sends: the CNI_* variables of `env` and stdin."""
    block = b"".join(
        k.encode(errors="surrogateescape") + b"=" + v.encode(errors="surrogateescape") + b"\0"
        for k, v in env.items()
        if k.startswith("CNI_")
    )
    return b"%s %d %d\n%s%s" % (PROTOCOL, len(block), len(stdin), block, stdin)


def decode_request(data: bytes) -> tuple[dict[str, str], bytes]:
    """A whole request as bytes; `WireError` for anything else."""
    line, sep, body = data.partition(b"\n")
    if not sep:
        raise WireError("no header line")
    return split_request(parse_request_head(line + sep), body)


def encode_response(exit_code: int, stdout: bytes) -> bytes:
    if not 0 <= exit_code <= 255:
        raise ValueError(f"exit code {exit_code} is not 0..255")
    if len(stdout) > MAX_STDOUT:
        raise ValueError(f"answer of {len(stdout)} bytes, more than {MAX_STDOUT}")
    return b"%s %d %d\n%s" % (PROTOCOL, exit_code, len(stdout), stdout)


def decode_response(data: bytes) -> tuple[int, bytes]:
    """(exit code, stdout) of a whole response; `WireError` for anything else, a cut-off
    answer included."""
    line, sep, body = data.partition(b"\n")
    exit_code, length = _header(line + sep)
    if exit_code > 255 or length > MAX_STDOUT:
        raise WireError(f"header out of bounds: {line!r}")
    if len(body) != length:
        raise WireError(f"answer of {len(body)} bytes, announced {length}")
    return exit_code, body
