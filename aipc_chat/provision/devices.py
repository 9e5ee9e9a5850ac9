"""OpenVINO devices: validate what the settings ask for against what this machine has; resolve AUTO."""

from __future__ import annotations

from collections.abc import Sequence

from aipc_chat.errors import ModelSetupError
from aipc_chat.provision.resolve import Kind

# What AUTO picks, best first. The NPU serves only when asked for: it needs static shapes (prompt length, image
# size) that a general-purpose default should not impose.
AUTO_PREFERENCE: dict[Kind, tuple[str, ...]] = {"llm": ("GPU", "CPU"), "image": ("GPU", "CPU")}


def available_devices() -> list[str]:
    """What OpenVINO sees on this machine (e.g. ``["CPU", "GPU.0", "GPU.1", "NPU"]``)."""
    import openvino as ov

    return [str(d) for d in ov.Core().available_devices]


def resolve_device(requested: str, available: Sequence[str], kind: Kind) -> str:
    """The device to compile on: ``requested`` if present, the best present one for ``AUTO``; else a clear error."""
    families = {d.split(".")[0] for d in available}
    if requested == "AUTO" or requested.startswith("AUTO:"):
        candidates = requested.partition(":")[2].split(",") if ":" in requested else AUTO_PREFERENCE[kind]
        for device in candidates:
            if device in available or device in families:
                return device
        raise ModelSetupError(f"AUTO found none of {', '.join(candidates)} for the {kind} model; this machine has "
                              f"{', '.join(available) or 'no OpenVINO devices'}.")
    if requested in available or (requested in families and "." not in requested):
        return requested
    setting = f"AIPC_{kind.upper()}_DEVICE"
    raise ModelSetupError(f"{setting}={requested}, but OpenVINO sees only {', '.join(available) or 'no devices'} "
                          f"here. Set {setting} to one of them (or AUTO); a GPU or NPU needs Intel's drivers.")
