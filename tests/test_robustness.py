"""A fast subset of the robustness suite (benchmarks/robustness.py): every class of hostile input, each
run judged clean (expected exit code, one stderr line, inputs unchanged, no leftovers, no partial output)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import robustness  # noqa: E402

SUBSET = 4  # every 4th case of each class (all classes, about a quarter of the runs)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("robustness")
    cases = robustness.prepare(root)
    by_kind: dict[str, list] = {}
    for case in cases:
        if case.interrupt_after is None or case.interrupt_after == min(
                c.interrupt_after or 99 for c in cases):
            by_kind.setdefault(case.kind, []).append(case)
    chosen = [c for group in by_kind.values() for c in group[::SUBSET]]
    return robustness.run_all(chosen, root, jobs=2)


def test_every_class_is_covered(outcomes):
    assert {o.kind for o in outcomes} == {"analyses", "data files", "external data", "interrupts", "model files",
                                          "options", "output paths", "plans"}
    assert len(outcomes) >= 70


def test_every_run_is_clean(outcomes):
    unclean = [f"{o.name}: {'; '.join(o.problems)} ({o.stderr})" for o in outcomes if not o.clean]
    assert not unclean, "\n".join(unclean)


def test_the_judge_sees_a_dirty_run(tmp_path):
    """The classification itself: a traceback, a wrong exit code and a partial output are all caught."""
    root = tmp_path
    (root / "in").mkdir()
    case = robustness.Case("crash", "test", ["compress", "{in}/missing.onnx", "-o", "{out}/o.onnx"], expect=(0,))
    out = robustness.run_case(case, root, 0)
    assert not out.clean and out.code == 2 and "exit 2, expected 0" in out.problems[0]
