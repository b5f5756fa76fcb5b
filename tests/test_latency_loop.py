"""Closed-loop latency budget (ttcompile.planning.latency_loop) on a synthetic solver with an off prediction."""

import pytest

from ttcompile.planning.budget import Budget, BudgetInfeasible, Solution
from ttcompile.planning.latency_loop import closed_loop

MODEL_MS = 10.0


def solver(true_scale: float, floor: float = 0.0, feasible_from: float = 0.0):
    """A solve that meets any asked fraction >= ``feasible_from`` by its own additive model; the real model
    runs at ``true_scale`` times that (never under ``floor``). Returns (solve, measure)."""

    def solve(budget: Budget) -> Solution:
        if budget.latency < feasible_from:
            raise BudgetInfeasible(f"latency={budget.latency} infeasible")
        report = {"budget": str(budget), "targets": {"latency": budget.latency * MODEL_MS}, "of_target": {},
                  "latency": {"predicted_ms": budget.latency * MODEL_MS, "target_ms": budget.latency * MODEL_MS}}
        return Solution([], "ratio", budget.latency, report)

    def measure(sol: Solution, samples: int) -> tuple[float, str]:
        return max(floor, sol.value * true_scale), f"{sol.value:.12g}"

    return solve, measure


@pytest.mark.parametrize("scale", [0.6, 0.8, 1.3])
def test_closed_loop_meets_the_target_on_the_whole_model(scale):
    solve, measure = solver(scale)
    sol = closed_loop(solve, measure, Budget(latency=0.5), MODEL_MS)
    lat = sol.report["latency"]
    loop = lat["closed_loop"]
    assert loop["met"] and 0.95 * 0.5 <= lat["predicted_ms"] / MODEL_MS <= 0.5
    assert lat["target_ms"] == pytest.approx(5.0) and lat["additive_ms"] == pytest.approx(sol.value * MODEL_MS)
    assert len(loop["rounds"]) == 2  # one correction suffices when the error is a constant factor
    assert sol.report["of_target"]["latency"] <= 1


def test_closed_loop_reports_a_target_it_cannot_meet():
    solve, measure = solver(1.3, floor=0.7, feasible_from=0.2)  # the model cannot get under 0.7 of the original
    sol = closed_loop(solve, measure, Budget(latency=0.5), MODEL_MS)
    loop = sol.report["latency"]["closed_loop"]
    assert not loop["met"] and sol.report["latency"]["predicted_ms"] == pytest.approx(7.0)


def test_closed_loop_raises_when_the_first_solve_is_infeasible():
    solve, measure = solver(1.0, feasible_from=0.9)
    with pytest.raises(BudgetInfeasible):
        closed_loop(solve, measure, Budget(latency=0.5), MODEL_MS)


def test_closed_loop_takes_milliseconds_as_an_absolute_target():
    solve, measure = solver(0.8)
    sol = closed_loop(solve, measure, Budget(latency=4.0), MODEL_MS)  # 4 ms of 10 ms
    assert sol.report["latency"]["closed_loop"]["goal"] == pytest.approx(0.4)
    assert sol.report["latency"]["predicted_ms"] <= 4.0


def test_closed_loop_bisects_a_step_shaped_plan_family():
    """Plans change in steps with the target (ResNet-20 at batch 32: 0.24 at 0.6, 1.34 at 1.0)."""
    def solve(budget: Budget) -> Solution:
        report = {"budget": str(budget), "targets": {}, "of_target": {},
                  "latency": {"predicted_ms": budget.latency * MODEL_MS}}
        return Solution([], "ratio", budget.latency, report)

    def measure(sol: Solution, samples: int) -> tuple[float, str]:
        step = 0.24 if sol.value < 0.7 else 0.55 if sol.value < 0.8 else 1.34
        return step, str(step)

    sol = closed_loop(solve, measure, Budget(latency=0.6), MODEL_MS)
    loop = sol.report["latency"]["closed_loop"]
    assert [r["solved_for"] for r in loop["rounds"]] == pytest.approx([0.6, 1.0, 0.8, 0.7])
    assert loop["met"] and sol.report["latency"]["predicted_ms"] == pytest.approx(5.5)


def test_closed_loop_confirms_the_kept_plan_with_more_timings():
    solve, _ = solver(1.0)
    timings = {}

    def measure(sol: Solution, samples: int) -> tuple[float, str]:
        key = f"{sol.value:.12g}"
        got = timings.setdefault(key, [])
        while len(got) < samples:  # this plan's first timing was 10 % low, the next ones are not
            got.append(sol.value * (0.9 if not got else 1.08))
        return sorted(got)[len(got) // 2], key

    sol = closed_loop(solve, measure, Budget(latency=0.5), MODEL_MS)
    lat = sol.report["latency"]
    assert lat["predicted_ms"] == pytest.approx(sol.value * 1.08 * MODEL_MS)  # the median, not the lucky timing
    assert lat["closed_loop"]["met"] == (sol.value * 1.08 <= 0.5)
