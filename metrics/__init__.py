"""Metric plug-ins: one file each (importable as tdabench.metrics.<name>)."""
