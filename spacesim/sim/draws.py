"""Buffered random draws: one numpy call per thousands of scalars.

A scalar call into `numpy.random.Generator` costs about a microsecond; the simulator
needs several per listener, so draws come from refilled buffers. The order of draws
is fixed by the (deterministic) order of SimPy events, so a seed still gives
identical records.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_CHUNK = 8192


class Draws:
    """Scalar draws from a `numpy.random.Generator`, buffered per distribution."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._exp: Iterator[float] = iter(())
        self._uni: Iterator[float] = iter(())
        self._norm: Iterator[float] = iter(())
        self._gamma: dict[int, Iterator[float]] = {}

    def exp(self, mean: float) -> float:
        """Exponential with the given mean."""
        try:
            return next(self._exp) * mean
        except StopIteration:
            self._exp = iter(self.rng.standard_exponential(_CHUNK).tolist())
            return next(self._exp) * mean

    def uniform(self) -> float:
        """Uniform on [0, 1)."""
        try:
            return next(self._uni)
        except StopIteration:
            self._uni = iter(self.rng.random(_CHUNK).tolist())
            return next(self._uni)

    def normal(self) -> float:
        """Standard normal."""
        try:
            return next(self._norm)
        except StopIteration:
            self._norm = iter(self.rng.standard_normal(_CHUNK).tolist())
            return next(self._norm)

    def gamma(self, shape: int, mean: float) -> float:
        """Sum of `shape` exponentials of mean `mean` (one draw instead of `shape`)."""
        it = self._gamma.get(shape)
        x = next(it, None) if it is not None else None
        if x is None:
            values: list[float] = self.rng.standard_gamma(shape, _CHUNK).tolist()
            it = iter(values)
            self._gamma[shape] = it
            x = next(it)
        return x * mean

    def standard_exponential(self) -> float:
        """Exponential with mean 1."""
        return self.exp(1.0)

    def poisson(self, lam: float) -> int:
        return int(self.rng.poisson(lam)) if lam > 0 else 0

    def binomial(self, n: int, p: float) -> int:
        if n <= 0:
            return 0
        if p >= 1.0:
            return n
        return int(self.rng.binomial(n, p))

    def index(self, n: int) -> int:
        """A uniform index in range(n)."""
        return min(int(self.uniform() * n), n - 1)
