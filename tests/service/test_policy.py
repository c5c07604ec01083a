"""The level policy: profiles + corrections + queue state -> level (pure, no server)."""

from __future__ import annotations

import pytest

from service.policy import (
    Budget,
    Correction,
    LevelProfile,
    LevelState,
    choose,
    fill_wait_ms,
    retry_after_s,
    work_ms,
)

B = 64  # max batch size


def profile(name: str, accuracy: float, ms_at_1: float, ms_at_64: float) -> LevelProfile:
    return LevelProfile(
        name, {"full": 1.0, "1/2": 0.5, "1/4": 0.25}[name], accuracy, ((1, ms_at_1), (64, ms_at_64))
    )


FULL = profile("full", 0.95, 2.0, 20.0)
HALF = profile("1/2", 0.90, 1.0, 10.0)
QUARTER = profile("1/4", 0.80, 0.5, 5.0)


def states(**kw: LevelState) -> list[LevelState]:
    base = {"full": LevelState(FULL), "1/2": LevelState(HALF), "1/4": LevelState(QUARTER)}
    base.update({k.replace("_", "/"): v for k, v in kw.items()})
    return list(base.values())


def pick(budget: Budget, levels: list[LevelState] | None = None, rows: int = 1, delay: float = 0.0):
    return choose(levels or states(), budget, "full", rows, B, delay)


def test_profile_interpolates_and_extrapolates() -> None:
    assert FULL.predict_ms(1) == 2.0
    assert FULL.predict_ms(64) == 20.0
    assert FULL.predict_ms(32) == pytest.approx(2.0 + 18.0 * 31 / 63)
    assert FULL.predict_ms(128) == pytest.approx(20.0 + 18.0 / 63 * 64)  # last slope continues
    assert FULL.predict_ms(0) == 2.0
    single = LevelProfile("x", 1.0, 0.9, ((8, 4.0),))
    assert single.predict_ms(4) == 4.0 and single.predict_ms(16) == 8.0


def test_no_budget_runs_the_default_and_explicit_runs_the_named_level() -> None:
    assert pick(Budget()).level == "full" and pick(Budget()).policy == "default"
    d = pick(Budget(level="1/4"))
    assert (d.level, d.policy, d.budget_met) == ("1/4", "explicit", None)


def test_latency_budget_picks_the_most_accurate_level_that_fits() -> None:
    assert pick(Budget(latency_ms=5.0)).level == "full"
    assert pick(Budget(latency_ms=1.5)).level == "1/2"
    d = pick(Budget(latency_ms=0.6))
    assert (d.level, d.policy, d.budget_met) == ("1/4", "latency_budget", True)


def test_latency_budget_that_nothing_meets_runs_the_fastest_and_says_so() -> None:
    d = pick(Budget(latency_ms=0.1))
    assert (d.level, d.budget_met, d.max_wait_ms) == ("1/4", False, 0.0)


def test_queue_ahead_counts_against_the_budget() -> None:
    # 128 samples queued on full: two batches of 64 ahead (40 ms) -> full no longer fits 10 ms
    busy = states(full=LevelState(FULL, queued_samples=128, idle=False))
    assert pick(Budget(latency_ms=10.0), busy).level == "1/2"
    # a running batch's remaining time counts too
    running = states(full=LevelState(FULL, running_remaining_ms=9.0, idle=False))
    assert pick(Budget(latency_ms=10.0), running).level == "1/2"


def test_online_correction_scales_the_profile() -> None:
    slow_full = states(full=LevelState(FULL, correction=3.0))
    assert pick(Budget(latency_ms=5.0), slow_full).level == "1/2"
    c = Correction(alpha=0.5)
    c.observe(predicted_ms=2.0, observed_ms=6.0)
    assert c.ratio == 3.0  # the first observation replaces the prior
    c.observe(predicted_ms=2.0, observed_ms=2.0)
    assert c.ratio == 2.0
    c.observe(predicted_ms=1.0, observed_ms=1e9)
    assert c.ratio <= (1 - 0.5) * 2.0 + 0.5 * c.bounds[1]  # outliers are clamped


def test_accuracy_floor_picks_the_fastest_level_that_meets_it() -> None:
    d = pick(Budget(min_accuracy=0.85))
    assert (d.level, d.policy, d.budget_met) == ("1/2", "min_accuracy", True)
    assert pick(Budget(min_accuracy=0.0)).level == "1/4"
    d = pick(Budget(min_accuracy=0.99))  # nothing is that accurate: the most accurate, budget missed
    assert (d.level, d.budget_met) == ("full", False)


def test_accuracy_floor_and_latency_budget_together() -> None:
    d = pick(Budget(latency_ms=1.5, min_accuracy=0.85))
    assert (d.level, d.budget_met) == ("1/2", True)
    d = pick(Budget(latency_ms=0.6, min_accuracy=0.85))  # 1/4 would fit but is not accurate enough
    assert (d.level, d.budget_met) == ("1/2", False)


def test_batching_delay_is_predicted_and_capped_by_the_budget_slack() -> None:
    idle = LevelState(QUARTER)
    assert fill_wait_ms(idle, 1, B, 2.0) == 2.0
    assert fill_wait_ms(idle, 64, B, 2.0) == 0.0  # a full batch starts at once
    d = choose(states(), Budget(latency_ms=1.5), "full", 1, B, 2.0)
    assert d.level == "1/2"
    assert d.max_wait_ms == pytest.approx(0.5)  # 1.5 ms budget - 1.0 ms compute
    assert d.predicted_ms == pytest.approx(1.5)
    d = choose(states(), Budget(), "full", 1, B, 2.0)
    assert (d.max_wait_ms, d.predicted_ms) == (2.0, 4.0)


def test_work_cuts_queue_into_full_batches_and_retry_after_is_whole_seconds() -> None:
    s = LevelState(HALF, queued_samples=100, idle=False)
    assert work_ms(s, 28, B) == pytest.approx(2 * 10.0)
    assert work_ms(s, 0, B) == pytest.approx(10.0 + HALF.predict_ms(36))
    assert retry_after_s(s, B) == 1
    assert retry_after_s(LevelState(HALF, correction=50.0, queued_samples=6400), B) == 50
