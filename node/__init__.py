"""DICOM routing node: receive, complete, classify, route by YAML rules, forward, audit."""

__version__ = "0.1.0"
