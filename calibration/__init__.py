"""Accuracy-parity checks and INT8 calibration."""
