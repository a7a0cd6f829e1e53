"""The kubelet's rule for extended resource names, as plain functions.

The kubelet refuses to register a device plugin whose resource name is not a
valid *extended* resource name, and the API server refuses pods that request
one. Checking the same rule early (config validation, the kubelet stand-in)
turns a silent registration loop into a clear error.

The rule, as the kubelet applies it:
- the name has a domain prefix (`domain/name`) outside `kubernetes.io`
  (any name containing `kubernetes.io/` is reserved for native resources),
  and does not start with `requests.` (quota syntax);
- `requests.` + the name must be a qualified name: a DNS-1123 subdomain
  prefix of at most 253 characters, then `/`, then at most 63 characters of
  `[A-Za-z0-9_.-]` starting and ending alphanumeric.
"""

from __future__ import annotations

import re

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_DNS1123_SUBDOMAIN_MAX = 253
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_QUALIFIED_NAME_MAX = 63
_NATIVE_PREFIX = "kubernetes.io/"
_QUOTA_PREFIX = "requests."


def _domain_problems(domain: str, max_len: int) -> list[str]:
    if not domain:
        return ["the domain before '/' is empty"]
    if len(domain) > max_len:
        return [f"the domain is longer than {max_len} characters"]
    if not _DNS1123_SUBDOMAIN.fullmatch(domain):
        return [
            f"the domain {domain!r} is not a DNS-1123 subdomain "
            "(lower-case alphanumerics, '-' and '.', alphanumeric at both ends)"
        ]
    return []


def _name_part_problems(name: str) -> list[str]:
    if not name:
        return ["the name after '/' is empty"]
    problems = []
    if len(name) > _QUALIFIED_NAME_MAX:
        problems.append(f"the name after '/' is longer than {_QUALIFIED_NAME_MAX} characters")
    if not _QUALIFIED_NAME.fullmatch(name):
        problems.append(
            f"the name {name!r} must be alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return problems


def extended_resource_name_problems(name: str) -> list[str]:
    """Why the kubelet would refuse `name` as a device plugin resource; empty when it accepts it."""
    if "/" not in name:
        return [f"{name!r} has no domain; expected 'example.com/name'"]
    if _NATIVE_PREFIX in name:
        return [f"{name!r} is in the reserved kubernetes.io domain"]
    if name.startswith(_QUOTA_PREFIX):
        return [f"{name!r} starts with {_QUOTA_PREFIX!r}, which is reserved for quota"]
    domain, _, rest = name.partition("/")
    if "/" in rest:
        return [f"{name!r} has more than one '/'; expected 'example.com/name'"]
    # The kubelet checks the quota form `requests.<name>`, whose domain must
    # stay within the subdomain limit: that leaves 244 characters for ours.
    max_domain = _DNS1123_SUBDOMAIN_MAX - len(_QUOTA_PREFIX)
    return _domain_problems(domain, max_domain) + _name_part_problems(rest)


def is_extended_resource_name(name: str) -> bool:
    """True when the kubelet accepts `name` as an extended resource name."""
    return not extended_resource_name_problems(name)
