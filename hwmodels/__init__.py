"""Hardware models: devices, links, roofline pricing of operators, energy and price.

The device catalog (``devices.yaml``) is reached through :func:`get_device`;
devices not in it can be given inline with :func:`device_from_dict`.
"""

from hwmodels.device import (
    DEVICES,
    DeviceSpec,
    device_from_dict,
    get_device,
    load_device_catalog,
)

__all__ = [
    "DEVICES",
    "DeviceSpec",
    "device_from_dict",
    "get_device",
    "load_device_catalog",
]
