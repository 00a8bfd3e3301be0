"""Meters behind one contract (begin/end windows); select_meters picks them for a server."""

from tuner.meters.base import Meter, Reading
from tuner.meters.select import select_meters

__all__ = ["Meter", "Reading", "select_meters"]
