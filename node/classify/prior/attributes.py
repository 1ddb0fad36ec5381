"""Values of header attributes as the prior reads them: text (multi-valued joined) and finite numbers."""

from __future__ import annotations

import math
from typing import Any

from pydicom.dataset import Dataset


def attribute_text(header: Dataset, keyword: str) -> str:
    value = header.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str):  # a multi-valued LO read as MultiValue
        try:
            value = " ".join(str(v) for v in value)
        except TypeError:
            value = str(value)
    return value.strip()


def attribute_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
