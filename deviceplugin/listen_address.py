"""`--metrics-address`: where the HTTP endpoint listens, or that it does not.

Kept apart from the endpoint so that checking the flag (before anything
starts) costs no HTTP or Prometheus import, and `0` switches them off.
"""

from __future__ import annotations

import ipaddress
import re

DEFAULT_ADDRESS = ":9477"
DISABLED = "0"

_PORT = re.compile(r"[0-9]{1,5}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
_FORMS = "expected host:port, :port or [ipv6]:port (0 disables)"


def parse_address(text: str) -> tuple[str, int] | None:
    """`--metrics-address` → (host, port); None for `0` (disabled). Host "" = every interface.

    Port 0 with a host (`127.0.0.1:0`) asks the kernel for a free port, which
    tests use; a bare `0` is the documented way to switch the server off.
    """
    if text == DISABLED:
        return None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"metrics address {text!r}: no closing ']'; {_FORMS}")
        colon, port_text = rest[:1], rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
    if colon != ":":
        raise ValueError(f"metrics address {text!r}: no ':port'; {_FORMS}")
    if not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        raise ValueError(f"metrics address {text!r}: port {port_text!r} is not 0-65535; {_FORMS}")
    _check_host(text, host, bracketed=text.startswith("["))
    return host, int(port_text)


def _check_host(text: str, host: str, *, bracketed: bool) -> None:
    if bracketed:
        kind, valid = "an IPv6 address", _is_ip(ipaddress.IPv6Address, host)
    elif ":" in host:
        raise ValueError(f"metrics address {text!r}: an IPv6 host needs brackets, as [::1]:9477")
    elif _DOTTED_NUMBERS.fullmatch(host):
        kind, valid = "an IPv4 address", _is_ip(ipaddress.IPv4Address, host)
    else:
        kind, valid = "a host name", not host or _HOSTNAME.fullmatch(host) is not None
    if not valid:
        raise ValueError(f"metrics address {text!r}: {host!r} is not {kind}; {_FORMS}")


def _is_ip(kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address], text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True
