"""Shipped trace files (package data); see README.md here for origins, licences and citations.

A package (not a bare folder) so that setuptools installs the files with the
``traces`` package; code finds them through :mod:`traces.catalog`.
"""
