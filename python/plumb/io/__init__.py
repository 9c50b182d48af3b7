"""Readers and writers for load statistics and placements (plumb's own and the engines').

``read_stats`` / ``read_placement`` / ``write_placement`` speak every format (see
``plumb.io.formats``); one module per format holds its details.
"""

from .formats import (FORMATS, OUTPUT_FORMATS, detect_format, read_placement, read_stats,
                      write_placement)
from .npz import PlumbStats, load_plumb_npz, save_plumb_npz

__all__ = ["FORMATS", "OUTPUT_FORMATS", "PlumbStats", "detect_format", "load_plumb_npz",
           "read_placement", "read_stats", "save_plumb_npz", "write_placement"]
