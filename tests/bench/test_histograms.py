"""Histogram quantiles as PromQL computes them (shared by the benchmarks and the server tests)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streamvsr.bench.histograms import bucket_quantile
from streamvsr.bench.serving import histogram_quantile, scrape

INF = math.inf
BUCKETS = [(0.1, 2), (0.5, 6), (1.0, 10), (INF, 10)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.0, 0.0),
        (0.1, 0.05),  # inside the first bucket, which starts at 0
        (0.2, 0.1),  # exactly at a bound
        (0.4, 0.3),  # halfway through (0.1, 0.5]
        (0.95, 0.9375),
        (1.0, 1.0),
    ],
)
def test_quantiles_are_linear_within_a_bucket(q: float, expected: float) -> None:
    assert bucket_quantile(BUCKETS, q) == pytest.approx(expected)


def test_bucket_order_does_not_matter() -> None:
    assert bucket_quantile(reversed(BUCKETS), 0.4) == pytest.approx(0.3)


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert bucket_quantile([(0.1, 1), (0.5, 2), (INF, 10)], 0.95) == 0.5


@pytest.mark.parametrize("buckets", [[], [(0.1, 0), (INF, 0)]])
def test_no_observations_give_none(buckets) -> None:
    assert bucket_quantile(buckets, 0.5) is None


@pytest.mark.parametrize("q", [-0.1, 1.5])
def test_a_quantile_outside_0_1_is_an_error(q: float) -> None:
    with pytest.raises(ValueError, match=r"not within 0\.\.1"):
        bucket_quantile(BUCKETS, q)


def test_the_benchmark_takes_quantiles_of_what_was_observed_between_scrapes() -> None:
    registry = CollectorRegistry()
    latency = Histogram("latency_seconds", "", buckets=(0.1, 0.5, 1.0), registry=registry)
    for _ in range(10):
        latency.observe(2.0)  # before the window: in +Inf
    start = scrape(generate_latest(registry).decode())
    for seconds in (0.05, 0.3, 0.3, 0.3):
        latency.observe(seconds)
    end = scrape(generate_latest(registry).decode())
    assert histogram_quantile(end, "latency_seconds", 0.5, start) == pytest.approx(0.2333, 1e-3)
    assert histogram_quantile(end, "latency_seconds", 0.5) == 1.0  # all time: in +Inf
    assert histogram_quantile(start, "latency_seconds", 0.5, start) is None
