"""The end-to-end benchmark's sustained rate: the stream's rate in full flow, not diluted by the pipeline's fixed
latency (pure arithmetic on a simulated searchable count; no services)."""

from __future__ import annotations

import math

import pytest

from inference.bench import _cpu_seconds, mean_rate, steady_rate, steady_window


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


def test_the_reference_rate_averages_the_passes_as_a_sustained_rate_does() -> None:
    # two passes of 2,000 documents, one in a fast moment of the machine (5 s) and one in a slow one (8 s)
    assert mean_rate(2000, [5.0, 8.0]) == pytest.approx(4000 / 13.0)
    # all the documents over all the time: between the slow pass (250/s) and the fast one (400/s)
    assert 250.0 < mean_rate(2000, [5.0, 8.0]) < 400.0
    assert mean_rate(2000, [4.0]) == 500.0
    with pytest.raises(ValueError, match="at least one pass"):
        mean_rate(2000, [])
    with pytest.raises(ValueError, match="positive"):
        mean_rate(2000, [1.0, 0.0])


def test_the_steady_window_brackets_the_full_flow() -> None:
    samples = _follow(250.0, 4000, 1.0)
    window = steady_window(samples, 4000)
    assert window is not None
    a, b = window
    # the window starts at the first sample with 10% searchable and ends at the first with 90%
    assert samples[a][1] >= 400 and samples[a - 1][1] < 400
    assert samples[b][1] >= 3600 and samples[b - 1][1] < 3600
    assert steady_rate(samples, 4000) == pytest.approx(
        (samples[b][1] - samples[a][1]) / (samples[b][0] - samples[a][0])
    )
    assert steady_window(_follow(5000.0, 2000, 0.5), 2000) is None


def test_cpu_seconds_reads_this_process_and_none_for_a_missing_one() -> None:
    import os
    import time

    # process_time() counts the same thing (every thread of this process), so threads that earlier tests left
    # running in the test process add to both sides alike
    t0, before = time.process_time(), _cpu_seconds(os.getpid())
    if before is None:
        pytest.skip("no /proc on this platform")
    while time.process_time() - t0 < 0.3:  # burn 0.3 s of CPU
        pass
    after, t1 = _cpu_seconds(os.getpid()), time.process_time()
    assert after is not None
    assert after - before >= 0.25
    assert after - before == pytest.approx(t1 - t0, abs=0.05)  # /proc counts in 10 ms ticks
    assert _cpu_seconds(2**22 + 12345) is None  # above Linux's pid_max: never a process
