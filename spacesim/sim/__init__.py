"""The SimPy model of a space: what happens at a scale no load test reaches."""

from spacesim.sim.engine import replay, simulate

__all__ = ["replay", "simulate"]
