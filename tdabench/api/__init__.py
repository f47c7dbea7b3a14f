"""Interfaces: what a plug-in implements and uses — Task, Method, Metric, the ground-truth types, published tables and
suite steps, the registry, config parsing and checks, seeds, the unrolled-training hook.  Imports nothing above it."""
