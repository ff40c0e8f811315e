"""The sweep service: spec validation, search space, Ray Tune wiring, CLI and reports."""

from sweeps.spec import SweepSpec

__all__ = ["SweepSpec"]
