"""The end-to-end benchmark's sustained rate: the stream's rate in full flow, not diluted by the pipeline's fixed
latency (pure arithmetic on a simulated searchable count; no services)."""

from __future__ import annotations

import math

import pytest

from inference.bench import steady_rate


def _follow(rate: float, n: int, latency: float, refresh: float = 1.0, poll: float = 0.2) -> list[tuple[float, int]]:
    """What the benchmark's poller sees: documents indexed at ``rate`` after ``latency``, made searchable by a
    refresh every ``refresh`` seconds, counted every ``poll`` seconds until all ``n`` are searchable."""
    samples: list[tuple[float, int]] = []
    k = 0
    while True:
        t = k * poll + 0.013  # a count request takes a moment
        last_refresh = math.floor(t / refresh) * refresh
        searchable = int(min(n, max(0.0, rate * (last_refresh - latency))))
        samples.append((t, searchable))
        if searchable >= n:
            return samples
        k += 1


@pytest.mark.parametrize(("rate", "latency"), [(250.0, 1.0), (120.0, 0.4), (400.0, 2.0)])
def test_the_sustained_rate_is_the_stream_rate_whatever_the_fixed_latency(rate: float, latency: float) -> None:
    n = 4000
    samples = _follow(rate, n, latency)
    whole_run = n / samples[-1][0]
    steady = steady_rate(samples, n)
    assert steady is not None
    # within the refresh steps' granularity (1 s in a middle stretch of 8-27 s)
    assert steady == pytest.approx(rate, rel=0.08)
    # the whole run's rate pays the latency (and part of a refresh) once, and reads lower by that much
    assert whole_run <= n / (latency + n / rate)


def test_a_run_too_short_to_show_a_rate_gives_none() -> None:
    # 2,000 documents at 5,000/s: all of them appear at one refresh
    assert steady_rate(_follow(5000.0, 2000, 0.5), 2000) is None
    assert steady_rate([(0.2, 0), (0.4, 10)], 2000) is None  # never reached 90%
