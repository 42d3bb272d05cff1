"""Latency: the tables (LUTs), the one latency model, calibration, verification, peer formats, plots."""
