"""Hardware models: devices, links, roofline pricing of operators, energy and price.

The device catalog (``devices.yaml``) is reached through :func:`get_device`;
devices not in it can be given inline with :func:`device_from_dict`.
"""

from typing import TYPE_CHECKING

from capsim.lazy import lazy_exports

# Names resolve on first use (PEP 562): importing a submodule such as ``hwmodels.calibration.cli`` (which the
# command line registers at every start, ``capsim --help`` included) does not parse the device catalog.
_EXPORTS = {
    name: "hwmodels.device" for name in ("DEVICES", "DeviceSpec", "device_from_dict", "get_device", "load_device_catalog")
}
__getattr__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and editors
    from hwmodels.device import DEVICES, DeviceSpec, device_from_dict, get_device, load_device_catalog  # noqa: F401

__all__ = [
    "DEVICES",
    "DeviceSpec",
    "device_from_dict",
    "get_device",
    "load_device_catalog",
]
