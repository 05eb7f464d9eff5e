"""The latency benchmark's quantiles interpolate within histogram buckets as
Prometheus' histogram_quantile does."""

import math

from bench.bench_latency import quantile

INF = math.inf


def test_linear_within_the_bucket_holding_the_rank():
    cumulative = {0.05: 0.0, 0.1: 10.0, 0.25: 10.0, INF: 10.0}
    assert math.isclose(quantile(0.5, cumulative), 0.075)
    assert math.isclose(quantile(0.99, cumulative), 0.0995)


def test_first_bucket_starts_at_zero():
    assert quantile(0.5, {0.001: 4.0, 0.0025: 4.0, INF: 4.0}) == 0.0005


def test_rank_in_the_inf_bucket_answers_the_highest_finite_bound():
    assert quantile(0.99, {0.05: 2.0, 0.1: 5.0, INF: 10.0}) == 0.1
    assert quantile(0.5, {0.05: 2.0, 0.1: 5.0, INF: 10.0}) == 0.1


def test_no_observations_is_nan():
    assert math.isnan(quantile(0.5, {0.1: 0.0, INF: 0.0}))
    assert math.isnan(quantile(0.5, {}))


def test_a_stage_that_never_published_shows_none_in_the_table():
    from bench.harness import Figure, table

    row = table(
        [
            Figure(
                "latency",
                "window close → Order published, p99 (risk)",
                "ms",
                [math.nan] * 3,
                goal="< 100 ms",
                higher_is_better=False,
                target=100.0,
            )
        ]
    ).splitlines()[-1]
    assert row == "| latency | window close → Order published, p99 (risk) | none | none – none | < 100 ms ✘ |"


def test_runs_that_observed_nothing_do_not_count_in_median_and_spread():
    from bench.harness import Figure, table

    f = Figure(
        "latency",
        "p99 (bars)",
        "ms",
        [math.nan, 300.0, 100.0, 200.0],
        goal="< 100 ms",
        higher_is_better=False,
        target=100.0,
    )
    assert (f.median, f.spread, f.met) == (200.0, (100.0, 300.0), False)
    assert table([f]).splitlines()[-1] == "| latency | p99 (bars) | 200 ms | 100 – 300 | < 100 ms ✘ |"
