"""The config file: the SR-IOV network device plugin's `resourceList`, validated.

A config a user wrote for sriovdp must select the same devices here, and a
mistake must stop netdp before it registers anything, with a message naming
the file, the field and what was expected. So the pydantic models mirror
sriovdp's JSON keys exactly, refuse unknown keys (a typo would otherwise
silently widen or empty a pool), and refuse known sriovdp features netdp
cannot honour instead of ignoring them.

One idea per module:

- `values`: the leaf values (ids, PCI addresses, `#` VF ranges, names), text
  to normalised value, with the user's error message;
- `schema`: the pydantic models, their nesting and `config_keys()`;
- `errors`: `ConfigError` and the wording of pydantic's errors;
- `convert`: validated models to `PoolSpec`s (checks across pools, warnings)
  and back, `parse_config`, `default_config`;
- `files`: decoding JSON or YAML files, `load_config`.

Decisions (also in `config_keys()`, which docs/configuration.md follows):

- Every level refuses unknown keys, with a "did you mean" hint.
- Honoured sriovdp keys: `resourceName`, `resourcePrefix` (default
  `intel.com`, sriovdp's `--resource-prefix` default), `deviceType`
  (`netDevice`, default), `selectors` (one object or a non-empty list, OR-ed),
  `excludeTopology`, `additionalInfo`; selector fields `vendors`, `devices`,
  `drivers`, `pciAddresses`, `pfNames`, `rootDevices`, `linkTypes`. An empty
  selector list (`"vendors": []`) does not constrain, as in sriovdp; netdp warns.
- sriovdp keys accepted only with their default value (false, null or an empty
  list), because netdp cannot honour them and ignoring them would either
  select devices the filter meant to leave out (`ddpProfiles`, `pKeys`,
  `acpiIndexes`, `auxTypes`) or hand a pod a device without what it asked for
  (`isRdma`, `needVhostNet`, `vdpaType`). The device types `accelerator` and
  `auxNetDevice` are refused.
- netdp additions: `deviceType: vfio-pci` (only devices bound to vfio-pci),
  `allowDefaultRoute` (default false) and `pfLinkHealth` (default true).
- Stricter than sriovdp: ids must be 4 hex digits (`0x` and upper case
  accepted, stored as `8086`), PCI addresses must be well formed (short
  `03:02.0` gets domain `0000`), `#` VF ranges are checked when loading, not
  when matching, and resource names follow the kubelet's extended-resource
  rules rather than sriovdp's `[A-Za-z0-9_]+` (so `-` and `.` are allowed;
  a name whose `PCIDEVICE_*` key a shell cannot read gets a warning).
- YAML is read with every scalar kept as a string except booleans and null,
  so unquoted ids such as `8086` or `0x1af4` mean what they look like.
"""

from deviceplugin.config.convert import (
    DEFAULT_POOL_NAME,
    Config,
    config_to_dict,
    default_config,
    parse_config,
)
from deviceplugin.config.errors import ConfigError
from deviceplugin.config.files import load_config
from deviceplugin.config.schema import (
    DEFAULT_RESOURCE_PREFIX,
    ConfigKey,
    KeySupport,
    config_keys,
)
from deviceplugin.config.values import (
    format_pf_ref,
    normalise_pci_address,
    normalise_pci_id,
    parse_pf_name,
    parse_root_device,
)

__all__ = [
    "DEFAULT_POOL_NAME",
    "DEFAULT_RESOURCE_PREFIX",
    "Config",
    "ConfigError",
    "ConfigKey",
    "KeySupport",
    "config_keys",
    "config_to_dict",
    "default_config",
    "format_pf_ref",
    "load_config",
    "normalise_pci_address",
    "normalise_pci_id",
    "parse_config",
    "parse_pf_name",
    "parse_root_device",
]
