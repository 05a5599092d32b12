"""The forecast's arithmetic, on cases computed by hand."""

from __future__ import annotations

import numpy as np

from taskmill.planning.forecast import Runs, forecast, required_instances


def test_required_instances_applies_the_ten_percent_buffer() -> None:
    # capacity 10,000 ms less 10 % = 9,000 ms an instance
    totals = np.array([0.0, 1.0, 9000.0, 9000.5, 18000.0, 27001.0])
    assert required_instances(totals, 10_000, 0.10).tolist() == [0, 1, 1, 2, 2, 4]


def test_the_buffer_and_the_capacity_are_parameters() -> None:
    totals = np.array([5000.0, 5001.0, 12_000.0])
    assert required_instances(totals, 10_000, 0.5).tolist() == [1, 2, 3]  # 5,000 ms an instance
    assert required_instances(totals, 2_000, 0.0).tolist() == [3, 3, 6]  # no headroom at all


def test_runs_are_bucketed_by_time_and_weighted_by_their_cost() -> None:
    offsets = np.array([0.0, 30.0, 59.9, 60.0, 179.0, 180.0, -1.0])
    costs = np.array([5000.0, 5000.0, 100.0, 9001.0, 1.0, 1e9, 1e9])
    result = forecast(Runs.each(offsets, costs), horizon_s=180, bucket_s=60, capacity_ms=10_000, buffer=0.1)
    assert result.runs.tolist() == [3, 1, 1]  # the run at the horizon and the one before the window are outside
    assert result.required_ms.tolist() == [10100.0, 9001.0, 1.0]
    assert result.instances.tolist() == [2, 2, 1]
    assert result.projected_runs.tolist() == [0, 0, 0]


def test_projected_runs_add_to_the_scheduled_ones_and_are_told_apart() -> None:
    scheduled = Runs.each(np.array([10.0]), np.array([4000.0]))
    # One projected firing standing for three tasks that need 6,000 ms between them, and one single run.
    projected = Runs(np.array([20.0, 70.0]), np.array([6000.0, 500.0]), np.array([3.0, 1.0]))
    result = forecast(scheduled, projected, horizon_s=120, bucket_s=60, capacity_ms=10_000, buffer=0.1)
    assert result.runs.tolist() == [4, 1]
    assert result.projected_runs.tolist() == [3, 1]
    assert result.required_ms.tolist() == [10_000.0, 500.0]
    assert result.instances.tolist() == [2, 1]


def test_an_empty_horizon_needs_no_instances() -> None:
    result = forecast(Runs.empty(), Runs.empty(), horizon_s=3 * 3600, bucket_s=60, capacity_ms=10_000, buffer=0.1)
    assert len(result.runs) == 180
    assert result.runs.sum() == 0 and result.required_ms.sum() == 0
    assert result.instances.max() == 0


def test_a_horizon_that_is_not_a_whole_number_of_buckets_ends_with_a_partial_one() -> None:
    offsets = np.array([0.0, 100.0, 149.0])
    result = forecast(
        Runs.each(offsets, np.full(3, 9000.0)), horizon_s=150, bucket_s=60, capacity_ms=10_000, buffer=0.1
    )
    assert result.runs.tolist() == [1, 1, 1]
    assert result.instances.tolist() == [1, 1, 1]
