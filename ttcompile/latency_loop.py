"""Closed-loop latency budget: solve, build the whole compressed model, time it, correct the target, re-solve.

The additive model of ``ttcompile.latency`` (``T_model - sum_l D_l (1 - c_l / d_l)``) times each layer alone;
inside the model a chain shares caches and threads with its neighbours and its speed-up differs (measured:
0.76-1.75x off, ``benchmarks/results/latency_budget*.md``). So a latency budget is met on the whole model:

1. solve with the target fraction ``f`` (of the original's measured latency) -> plan ``P_0``;
2. rewrite the model by ``P_k`` (weight cores: only the chain shapes matter for time) and time it interleaved
   with the original (``LatencyTable.ratio``): measured fraction ``m_k``;
3. re-solve with the corrected target ``f_{k+1} = min(1, f_k f / m_k)`` (the plan's time scales with the
   target it was solved for), up to ``ROUNDS`` rewrites, stopping once ``(1 - TOL) f <= m_k <= f`` or when
   the solver returns a plan it returned before.

The plan kept is the round with the largest ``m_k <= f`` (closest to the target from below: the most
accuracy the budget allows); when no round meets ``f``, the fastest one. One timing on a shared machine
is noisy (single timings of one plan seen 10 % apart), so the kept plan is timed to ``CONFIRM`` samples and
their median is the solver's prediction (``predicted_ms``) and decides ``met``; the additive model's
prediction stays in the record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ttcompile.budget import Budget, BudgetInfeasible, Solution

ROUNDS, TOL, CONFIRM = 4, 0.05, 3

Solver = Callable[[Budget], Solution]
Measure = Callable[[Solution, int], tuple[float, str]]  # (sol, samples) -> (median latency / original's, plan key)


def target_fraction(budget: Budget, model_ms: float) -> float:
    """``latency=F``: F <= 1 is a fraction of ``model_ms``, F > 1 milliseconds."""
    return budget.latency if budget.latency <= 1 else budget.latency / model_ms


def closed_loop(solve: Solver, measure: Measure, budget: Budget, model_ms: float) -> Solution:
    """Solve ``budget`` (which has a latency target) so that the measured whole model meets it; the
    rounds are recorded in ``report["latency"]["closed_loop"]``."""
    goal = target_fraction(budget, model_ms)
    asked, rounds, done, seen = goal, [], [], set()
    for _ in range(ROUNDS):
        try:
            sol = solve(replace(budget, latency=asked))
        except BudgetInfeasible:
            if not done:
                raise
            break
        measured, key = measure(sol, 1)
        additive = sol.report["latency"]["predicted_ms"] / model_ms
        rounds.append({"solved_for": asked, "additive_prediction": additive, "measured": measured})
        if key in seen:
            break
        seen.add(key)
        done.append((measured, sol))
        if (1 - TOL) * goal <= measured <= goal or asked >= 1 and measured < goal:
            break
        asked = min(1.0, asked * goal / measured)
    met = [(m, s) for m, s in done if m <= goal]
    sol = max(met, key=lambda t: t[0])[1] if met else min(done, key=lambda t: t[0])[1]
    measured, _ = measure(sol, CONFIRM)
    lat = sol.report["latency"]
    lat.update(additive_ms=lat["predicted_ms"], predicted_ms=measured * model_ms, target_ms=goal * model_ms,
               formula=f"whole compressed model timed against the original at compress time (closed loop, "
                       f"median of {CONFIRM})",
               closed_loop={"goal": goal, "met": measured <= goal, "rounds": rounds})
    sol.report["targets"]["latency"] = goal * model_ms
    sol.report["of_target"]["latency"] = measured / goal
    return sol
