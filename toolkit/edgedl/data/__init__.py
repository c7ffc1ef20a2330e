"""Data sources that recipes declare (bundled with packages, so everything runs offline)."""

from edgedl.data.digits import Digits

__all__ = ["Digits"]
