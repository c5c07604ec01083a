"""The level policy: profiles + corrections + queue state -> level (pure, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from service.budget import Budget
from service.policy import (
    LAG_HOPS,
    MARGIN_SHARE,
    Correction,
    Estimate,
    LevelProfile,
    LevelState,
    Margin,
    admit,
    choose,
    fill_wait_ms,
    finish_by,
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
    assert pick(Budget(latency_ms=5.0), slow_full).level == "1/2"  # full: 2 ms x3 = 6 ms > 5
    assert pick(Budget(latency_ms=7.0), slow_full).level == "full"


def test_no_single_observation_replaces_the_estimate() -> None:
    c = Correction()
    c.observe_compute(predicted_ms=2.0, observed_ms=2000.0)  # x1000 once: a hiccup
    assert 1.0 < c.ratio <= c.clip**c.alpha + 1e-9
    for _ in range(60):  # a lasting change is followed
        c.observe_compute(predicted_ms=2.0, observed_ms=6.0)
    assert c.ratio == pytest.approx(3.0, rel=0.05)
    e = Estimate(0.5)
    e.observe(0.0)  # never reaches zero or goes negative
    assert 0 < e.value < 0.5


def test_the_fastest_level_at_idle_stays_fastest_after_a_noisy_first_observation() -> None:
    corrections = {"full": Correction(), "1/2": Correction(), "1/4": Correction()}
    corrections["1/4"].observe_compute(predicted_ms=0.5, observed_ms=0.5 * 4.19)  # the x4.19
    corrections["1/2"].observe_compute(predicted_ms=1.0, observed_ms=1.0 * 1.84)
    levels = [LevelState(p, correction=corrections[p.name].ratio) for p in (FULL, HALF, QUARTER)]
    assert pick(Budget(min_accuracy=0.0), levels).level == "1/4"


def test_the_servers_own_cost_is_part_of_the_prediction() -> None:
    d = choose(states(), Budget(latency_ms=2.2), "full", 1, B, 0.0, overhead_ms=1.0)
    assert d.level == "1/2" and d.predicted_ms == pytest.approx(2.0)  # full: 2 + 1 > 2.2
    assert choose(states(), Budget(), "full", 1, B, 0.0, 1.0).predicted_ms == pytest.approx(3.0)


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


def with_interval(p: LevelProfile, low: float) -> LevelProfile:
    return LevelProfile(p.name, p.keep_fraction, p.accuracy, p.latency_ms, low)


def test_levels_within_the_best_levels_interval_count_as_equally_accurate() -> None:
    # full's interval reaches down to 0.89: 1/2 (0.90) is as accurate, and cheaper; 1/4 (0.80) is not
    levels = [LevelState(with_interval(FULL, 0.89)), LevelState(HALF), LevelState(QUARTER)]
    d = pick(Budget(latency_ms=5.0), levels)
    assert (d.level, d.budget_met) == ("1/2", True)
    # when the cheaper tied level does not fit either, the next less accurate one is tried
    assert pick(Budget(latency_ms=0.6), levels).level == "1/4"
    # a narrow interval keeps the old order: the most accurate level that fits
    narrow = [LevelState(with_interval(FULL, 0.93)), LevelState(HALF), LevelState(QUARTER)]
    assert pick(Budget(latency_ms=5.0), narrow).level == "full"


def test_an_accuracy_floor_is_met_only_by_the_intervals_lower_end() -> None:
    # 1/2 measured 0.90 but its interval reaches 0.86: not at least 0.88 with 95% confidence
    levels = [LevelState(FULL), LevelState(with_interval(HALF, 0.86)), LevelState(QUARTER)]
    d = pick(Budget(min_accuracy=0.88), levels)
    assert (d.level, d.budget_met) == ("full", True)
    assert pick(Budget(min_accuracy=0.86), levels).level == "1/2"
    assert not with_interval(HALF, 0.86).meets(0.88) and with_interval(HALF, 0.86).meets(0.86)


def test_event_loop_lag_is_paid_per_hop_and_pushes_the_choice_down() -> None:
    budget = Budget(latency_ms=8.0)
    quiet = choose(states(), budget, "full", 1, B, 0.0, overhead_ms=0.5)
    assert quiet.level == "full" and quiet.predicted_ms == pytest.approx(2.5) and admit(quiet, 8.0)
    # the loop 3 ms late: full (2 + 0.5 + 2 * 3 = 8.5 ms) no longer fits, 1/2 (7.5 ms) does
    late = choose(states(), budget, "full", 1, B, 0.0, overhead_ms=0.5, lag_ms=3.0)
    assert late.level == "1/2" and late.predicted_ms == pytest.approx(1.0 + 0.5 + LAG_HOPS * 3.0)
    assert admit(late, 8.0)
    # 5 ms late: nothing fits; the fastest level is the prediction, and it is not admitted
    worst = choose(states(), budget, "full", 1, B, 0.0, overhead_ms=0.5, lag_ms=5.0)
    assert worst.level == "1/4" and not admit(worst, 8.0)


def test_finish_by_leaves_room_for_the_answer_after_the_batch() -> None:
    # arrival at t = 100 s, 50 ms budget, 2 ms of own cost, the loop 1 ms late: the batch ends by 146 ms
    assert finish_by(100.0, 50.0, 2.0, 1.0) == pytest.approx(100.0 + (50.0 - 2.0 - LAG_HOPS * 1.0) / 1000)
    assert finish_by(100.0, 50.0, 0.0, 0.0) == pytest.approx(100.05)


def test_margin_stays_zero_while_misses_are_rarer_than_the_target() -> None:
    margin = Margin(target=0.01, step_ms=2.0)
    for i in range(10_000):
        margin.observe(i % 500 != 0, 50.0)  # 0.2% misses: each one's step is undone within 100 hits
    assert margin.value_ms == pytest.approx(0.0, abs=2.0)
    assert margin.misses == 20 and margin.hits == 9_980


def test_margin_grows_on_misses_shrinks_on_hits_and_is_capped() -> None:
    margin = Margin(target=0.005, step_ms=2.0)
    margin.observe(False, 50.0)
    margin.observe(False, 50.0)
    assert margin.value_ms == pytest.approx(4.0)
    margin.observe(True, 50.0)  # one hit takes step * target / (1 - target) off
    assert margin.value_ms == pytest.approx(4.0 - 2.0 * 0.005 / 0.995)
    for _ in range(100):  # a burst of misses: at most MARGIN_SHARE of the budget kept back
        margin.observe(False, 50.0)
    assert margin.value_ms == pytest.approx(MARGIN_SHARE * 50.0)
    assert margin.for_budget(10.0) == pytest.approx(MARGIN_SHARE * 10.0)  # a smaller budget, its own cap
    for _ in range(100_000):  # and it comes back down on hits alone, never below 0
        margin.observe(True, 50.0)
    assert margin.value_ms == 0.0
    with pytest.raises(ValueError):
        Margin(target=0.0)


def test_margin_settles_where_the_target_share_of_admitted_requests_misses() -> None:
    """A controllable stand-in for an overloaded server: each request's unforeseen wait (the loop
    turns it did not see coming) is drawn at random; it is admitted if its prediction plus the margin
    fits the budget, and misses if prediction + wait does not."""
    rng = np.random.default_rng(0)
    budget, target = 50.0, 0.005
    margin = Margin(target=target, step_ms=2.0)
    missed = admitted = 0
    for i in range(200_000):
        predicted = rng.uniform(0.0, 40.0)
        wait = rng.exponential(6.0)  # a 0.5% tail past ~32 ms
        if predicted + margin.for_budget(budget) > budget:
            continue  # shed
        met = predicted + wait <= budget
        margin.observe(met, budget)
        if i >= 50_000:  # past the start, where it learns
            admitted += 1
            missed += not met
    assert admitted > 10_000
    assert missed / admitted == pytest.approx(target, rel=0.3)
    # with no margin, the same requests miss ten times as often
    no_margin = np.mean([rng.uniform(0, 40) + rng.exponential(6.0) > budget for _ in range(50_000)])
    assert no_margin > 5 * target


def test_the_margin_is_kept_back_at_admission_and_from_finish_by() -> None:
    d = choose(states(), Budget(latency_ms=8.0), "full", 1, B, 0.0, overhead_ms=0.5)
    assert d.predicted_ms == pytest.approx(2.5)
    assert admit(d, 8.0, margin_ms=5.5) and not admit(d, 8.0, margin_ms=5.6)
    assert finish_by(100.0, 50.0, 2.0, 1.0, 10.0) == pytest.approx(
        100.0 + (50.0 - 2.0 - LAG_HOPS * 1.0 - 10.0) / 1000
    )


def test_a_level_fits_a_budget_with_the_margin_to_spare() -> None:
    budget = Budget(latency_ms=8.0)
    # full (2.5 ms with 0.5 of overhead) fits 8 ms with 5.5 kept back, not with 6: then 1/2 (1.5) runs
    assert choose(states(), budget, "full", 1, B, 0.0, overhead_ms=0.5, margin_ms=5.5).level == "full"
    d = choose(states(), budget, "full", 1, B, 0.0, overhead_ms=0.5, margin_ms=6.0)
    assert d.level == "1/2" and admit(d, 8.0, 6.0)
    # nothing fits 8 ms with 7.5 kept back: the fastest level is the prediction, and it is shed
    worst = choose(states(), budget, "full", 1, B, 0.0, overhead_ms=0.5, margin_ms=7.5)
    assert worst.level == "1/4" and worst.budget_met is False and not admit(worst, 8.0, 7.5)
    # a batching delay waits at most the slack the margin leaves
    idle = choose(states(), budget, "full", 1, B, 10.0, overhead_ms=0.5, margin_ms=4.0)
    assert idle.level == "full" and idle.max_wait_ms == pytest.approx(8.0 - 4.0 - 2.5)
