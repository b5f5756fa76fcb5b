"""Robustness suite: every ttcompile command against a hostile corpus (``robustness_corpus``).

Each case runs ``ttcompile.cli.main(argv)`` in a forked child (two at a time, 4 GiB address space,
a time limit; interrupt cases run the console entry point as a subprocess and get SIGINT) with its own
empty output folder as the current directory. A run is clean when:

* it exits with one of the case's expected codes (0 success, 2 bad input, 3 failed verification,
  130 interrupted), in time, without dying;
* stderr has at most one line and no traceback;
* every input file is byte-for-byte unchanged and no file appeared in the input folder;
* no temporary file (``*.tmp``, ``sym_shape_infer_temp.onnx``, ``*.data``) is left anywhere;
* a failed run leaves its output folder empty; a successful one leaves only the case's outputs.

    python benchmarks/robustness.py [--jobs 2] [--only SUBSTRING]

prints the table and writes benchmarks/results/robustness.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness_cases import build  # noqa: E402
from robustness_corpus import Case  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MEMORY_LIMIT = 4 << 30
TIME_LIMIT = 120.0
TEMP_MARKERS = (".tmp", "sym_shape_infer_temp.onnx")


@dataclass
class Outcome:
    name: str
    kind: str
    argv: list[str]
    code: int | None
    seconds: float
    stderr: str
    problems: list[str]

    @property
    def clean(self) -> bool:
        return not self.problems


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(folder))] = "link" if p.is_symlink() else "dir" if p.is_dir() else "special"
    return out


def _child(argv: list[str], cwd: str, conn) -> None:
    """Run one command in this (forked) process; send (exit code, stderr) back."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.chdir(cwd)
    from ttcompile.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - an escaped exception is exactly what we look for
            traceback.print_exc()
            code = 1
    conn.send((code, err.getvalue()))
    conn.close()


def _run_forked(argv: list[str], cwd: Path) -> tuple[int | None, str, str | None]:
    parent, child = mp.Pipe(duplex=False)
    proc = mp.get_context("fork").Process(target=_child, args=(argv, str(cwd), child))
    proc.start()
    child.close()
    if not parent.poll(TIME_LIMIT):
        proc.kill()
        proc.join()
        return None, "", f"no result within {TIME_LIMIT:g} s"
    try:
        code, err = parent.recv()
    except EOFError:
        code, err = None, ""
    proc.join()
    return code, err, None if code is not None else f"died with signal/status {proc.exitcode}"


def _run_interrupted(argv: list[str], cwd: Path, after: float) -> tuple[int | None, str, str | None]:
    cmd = [sys.executable, "-c", "import sys; from ttcompile.cli import main; sys.exit(main(sys.argv[1:]))", *argv]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, "", "did not stop after SIGINT"
    return proc.returncode, err, None


def stderr_problem(err: str) -> str | None:
    """What is wrong with a command's stderr: more than one line, or a traceback; None when clean."""
    lines = err.strip().splitlines()
    if len(lines) > 1 or "Traceback" in err:
        return f"stderr has {len(lines)} lines" + (" with a traceback" if "Traceback" in err else "")
    return None


def run_case(case: Case, root: Path, index: int) -> Outcome:
    """Run ``case`` in a fresh output folder and judge it (see the module docstring)."""
    out = root / "out" / f"{index:04d}"
    out.mkdir(parents=True)
    stale = out / ".o.onnx.999999999-deadbeef.tmp"
    if case.kind == "interrupts" and case.interrupt_after is None:
        stale.write_bytes(b"left by a killed run")
    argv = [a.replace("{in}", str(root / "in")).replace("{out}", str(out)) for a in case.argv]
    before = _snapshot(root / "in")
    began = time.perf_counter()
    if case.interrupt_after is not None:
        code, err, died = _run_interrupted(argv, out, case.interrupt_after)
    else:
        code, err, died = _run_forked(argv, out)
    seconds = time.perf_counter() - began
    problems = [died] if died else []
    if code is not None and code not in case.expect:
        problems.append(f"exit {code}, expected {' or '.join(map(str, case.expect))}")
    lines = err.strip().splitlines()
    if problem := stderr_problem(err):
        problems.append(problem)
    after = _snapshot(root / "in")
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        problems.append(f"input folder changed: {', '.join(changed[:3])}")
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    temps = [p for p in left if any(m in p for m in TEMP_MARKERS) or p.endswith(".data")]
    if temps:
        problems.append(f"temporary files left: {', '.join(temps[:3])}")
    extra = [p for p in left if p not in temps and (code != 0 or p not in case.outputs)]
    if extra:
        problems.append(f"{'partial' if code != 0 else 'unexpected'} output: {', '.join(extra[:3])}")
    return Outcome(case.name, case.kind, case.argv, code, seconds, lines[-1] if lines else "", problems)


def prepare(root: Path) -> list[Case]:
    """The corpus, plus a valid plan, analysis and compressed student of good.onnx made by ttcompile."""
    from robustness_corpus import mlp

    from ttcompile.cli import main

    folder = root / "in"
    folder.mkdir(parents=True)
    good = folder / "good.onnx"
    good.write_bytes(mlp().SerializeToString())
    with contextlib.redirect_stdout(io.StringIO()):
        import numpy as np

        np.savez(folder / "data_ok.npz", x=np.random.default_rng(0).standard_normal((320, 64)).astype(np.float32),
                 y=np.arange(320) % 32)
        assert main(["compress", str(good), "-o", str(folder / "student.onnx"), "--rank", "2", "--force",
                     "--quiet"]) == 0
        os.replace(folder / "student.plan.json", folder / "good.plan.json")
        shutil.copy(folder / "good.plan.json", folder / "q.plan.json")
        assert main(["analyze", str(good), "--calib", str(folder / "data_ok.npz"), "-o",
                     str(folder / "analysis.json"), "--quiet"]) == 0
    plan = json.loads((folder / "good.plan.json").read_text())
    analysis = json.loads((folder / "analysis.json").read_text())
    cases = build(root, plan, analysis)
    os.mkfifo(folder / "fifo")  # a non-regular output target (standing in for a device node)
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        (folder / "readonly").mkdir()
        os.chmod(folder / "readonly", 0o555)
    else:
        cases = [c for c in cases if "read-only" not in c.name]
    return cases


def run_all(cases: list[Case], root: Path, jobs: int = 2) -> list[Outcome]:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    with ThreadPoolExecutor(jobs) as pool:  # each case is its own child process
        futures = [pool.submit(run_case, c, root, i) for i, c in enumerate(cases)]
        return [f.result() for f in tqdm(futures, desc="robustness", unit="run")]


def table(outcomes: list[Outcome], seconds: float) -> str:
    kinds = sorted({o.kind for o in outcomes})
    lines = ["| class | runs | clean | unclean |", "|---|---:|---:|---:|"]
    for k in kinds:
        group = [o for o in outcomes if o.kind == k]
        lines.append(f"| {k} | {len(group)} | {sum(o.clean for o in group)} | {sum(not o.clean for o in group)} |")
    clean = sum(o.clean for o in outcomes)
    lines.append(f"| **total** | **{len(outcomes)}** | **{clean}** | **{len(outcomes) - clean}** |")
    lines.append(f"\nwall time {seconds:.0f} s")
    bad = [o for o in outcomes if not o.clean]
    if bad:
        lines.append("\nunclean runs:\n")
        lines += [f"- `ttcompile {' '.join(o.argv)}`: {'; '.join(o.problems)} (stderr: {o.stderr[:200]!r})"
                  for o in bad]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", help="run only cases whose name contains this")
    p.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/robustness.*")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ttcompile-robustness-") as tmp:
        root = Path(tmp)
        cases = [c for c in prepare(root) if not args.only or args.only in c.name]
        outcomes = run_all(cases, root, args.jobs)
        shutil.rmtree(root / "out", ignore_errors=True)
    seconds = time.perf_counter() - began
    text = table(outcomes, seconds)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        command = "python benchmarks/robustness.py" + (f" --only {args.only!r}" if args.only else "")
        (RESULTS / "robustness.md").write_text(f"# Robustness suite\n\n`{command}`\n\n{text}\n")
        (RESULTS / "robustness.json").write_text(json.dumps(
            {"command": command, "wall_s": seconds, "runs": len(outcomes), "clean": sum(o.clean for o in outcomes),
             "outcomes": [{**asdict(o), "clean": o.clean} for o in outcomes]}, indent=1) + "\n")
    return 0 if all(o.clean for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
