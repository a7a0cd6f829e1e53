"""The kubelet's rule for extended resource names, as plain functions: the one rule set.

The kubelet refuses to register a device plugin whose resource name is not a
valid *extended* resource name, and the API server refuses pods that request
one. Config validation (per part: `resourcePrefix`, `resourceName`), the
registrar (before it calls Register) and the kubelet stand-in all ask this
module, so netdp cannot accept a name the kubelet refuses.

Transcribed from Kubernetes v1.20.2: the device manager's `Register` calls
`v1helper.IsExtendedResourceName` (pkg/apis/core/v1/helper/helpers.go):
- a name without '/' or containing `kubernetes.io/` anywhere is native
  (`IsNativeResource`), so `xkubernetes.io/foo` is native too;
- a name starting with `requests.` is refused (quota syntax);
- `requests.` + the name must pass `IsQualifiedName` (apimachinery
  util/validation): at most one '/'; before it a DNS-1123 subdomain of at most
  253 characters (so our domain gets 253 - len("requests.") = 244); after it
  1 to 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
"""

from __future__ import annotations

import re

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_DNS1123_SUBDOMAIN_MAX = 253
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_NAME_MAX = 63
_NATIVE_MARK = "kubernetes.io/"
_QUOTA_PREFIX = "requests."
# The kubelet checks the quota form `requests.<name>`, whose domain must stay
# within the subdomain limit.
_DOMAIN_MAX = _DNS1123_SUBDOMAIN_MAX - len(_QUOTA_PREFIX)


def domain_problems(domain: str) -> list[str]:
    """Why the kubelet would refuse every resource name with this domain (before the '/')."""
    if not domain:
        return ["the domain before '/' is empty"]
    if len(domain) > _DOMAIN_MAX or not _DNS1123_SUBDOMAIN.fullmatch(domain):
        return [
            f"expected a DNS subdomain of at most {_DOMAIN_MAX} characters (lower-case "
            "letters, digits, '-' and '.', a letter or digit at both ends of each label), "
            "e.g. 'example.com'"
        ]
    if (domain + "/").endswith(_NATIVE_MARK):
        return [
            "a domain ending in 'kubernetes.io' is reserved for Kubernetes' own resources "
            "(the kubelet takes any name containing 'kubernetes.io/' for a native resource)"
        ]
    if domain.startswith(_QUOTA_PREFIX):
        return [f"names starting with {_QUOTA_PREFIX!r} are reserved for resource quotas"]
    return []


def name_problems(name: str) -> list[str]:
    """Why the kubelet would refuse this part after the '/' whatever the domain."""
    if len(name) > _NAME_MAX or not _QUALIFIED_NAME.fullmatch(name):
        return [
            f"expected a qualified name of at most {_NAME_MAX} characters (letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit), e.g. 'sriov_net_a'"
        ]
    return []


def extended_resource_name_problems(name: str) -> list[str]:
    """Why the kubelet would refuse `name` as a device plugin resource; empty when it accepts it.

    In the kubelet's order: native, quota prefix, then the qualified-name
    syntax of the quota form, part by part.
    """
    if "/" not in name or _NATIVE_MARK in name:
        return [f"{name!r} is a native resource name: expected 'example.com/name'"]
    if name.startswith(_QUOTA_PREFIX):
        return [f"{name!r} starts with {_QUOTA_PREFIX!r}, which is reserved for quota"]
    domain, _, rest = name.partition("/")
    if "/" in rest:
        return [f"{name!r} has more than one '/'; expected 'example.com/name'"]
    return [f"{name!r}: {p}" for p in domain_problems(domain) + name_problems(rest)]


def is_extended_resource_name(name: str) -> bool:
    """True when the kubelet accepts `name` as an extended resource name."""
    return not extended_resource_name_problems(name)
