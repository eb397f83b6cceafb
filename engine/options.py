"""String enums for the engine's modes, validated with a message that lists the valid values."""

from enum import Enum

from .errors import InvalidOptionError

__all__ = ["UncertaintyMode", "TTAMode", "DeviceChoice", "HotspotMethod", "Precision", "look_up_option"]


class UncertaintyMode(str, Enum):
    """Which per-pixel uncertainty the uncertainty raster holds (see :mod:`engine.statistics`).

    Ranges: entropy [0, log C]; mutual_information [0, H[p̄]]; variance [0, 0.25]; margin
    1 − (p̄₍₁₎ − p̄₍₂₎) in [0, 1]; confidence 1 − max p̄ in [0, 1 − 1/C].
    """

    ENTROPY = "entropy"
    MUTUAL_INFORMATION = "mutual_information"
    VARIANCE = "variance"
    MARGIN = "margin"
    CONFIDENCE = "confidence"


class TTAMode(str, Enum):
    """Test-time augmentation views: none (1), flip (4: identity, h, v, both) or d4 (8, square tiles only)."""

    NONE = "none"
    FLIP = "flip"
    D4 = "d4"


class DeviceChoice(str, Enum):
    """auto picks CUDA when torch sees a GPU, the CPU otherwise."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class HotspotMethod(str, Enum):
    """Units of :mod:`engine.hotspots`: grid = square cells of CELL_SIZE pixels; regions = connected areas above
    THRESHOLD."""

    GRID = "grid"
    REGIONS = "regions"


def look_up_option(value, enum_type, name):
    """Return the member of ``enum_type`` for ``value`` (a member, its string value, or its index).

    >>> look_up_option("d4", TTAMode, "TTA_MODE")
    <TTAMode.D4: 'd4'>
    """
    members = list(enum_type)
    if isinstance(value, enum_type):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(members):
        return members[value]
    for member in members:
        if str(value).strip().lower() == member.value:
            return member
    valid = ", ".join(m.value for m in members)
    raise InvalidOptionError(f"{name}: expected one of {valid}; got {value!r}.")


class Precision(str, Enum):
    """Arithmetic of the model's forward pass (see :mod:`engine.precision`); statistics stay float32 or wider."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
