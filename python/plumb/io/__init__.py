"""Readers and writers for load statistics and placements (plumb's own and the engines')."""
