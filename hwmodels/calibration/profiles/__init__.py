"""Shipped calibrated device profiles (YAML), one file per catalog device id.

Written by ``capsim calibrate fit``; read by :mod:`hwmodels.calibration.profile`.
"""
