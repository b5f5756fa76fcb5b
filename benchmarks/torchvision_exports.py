"""``ttcompile inspect`` and ``compress`` in every format on torchvision exports (``benchmarks/tv_export.py``).

For each export in the manifest (both torch exporters: TorchScript opset 17 and dynamo opset 18; random
init, see tv_export.py) the command line runs as a subprocess (``python -m ttcompile.cli``, OMP_NUM_THREADS=1,
a time limit each): ``inspect``; ``compress --format svd --rank 1048576 --force`` (every layer at its rank
cap: the rewrite must reproduce the model, gate floor 1e-4); ``compress --format F --ratio R`` for every
format (default R = 0.5, no fine-tuning). Comparison inputs: ``--data`` with SAMPLES standard-normal images
(seed 1) of the export's input shape. Recorded per run: exit code, last stderr line, whether a traceback
appeared, the printed relative output error, whether the comparison checked nothing, wall time.

A run is clean when it exits 0, 2 (bad input) or 3 (the verification gate refused, nothing written) with at
most one stderr line and no traceback, within the time limit; exit 3 is counted on its own.

    OMP_NUM_THREADS=1 python benchmarks/torchvision_exports.py [--dir DIR] [--models a,b] [--formats x,y]

Writes ``benchmarks/results/torchvision_exports.{md,json}`` (JSON: non-finite numbers as null).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_models import FORMATS  # noqa: E402
from robustness import stderr_problem  # noqa: E402
from zoo import cache_dir, sha256  # noqa: E402

from ttcompile.atomic import write_bytes_atomic  # noqa: E402
from ttcompile.benchmark.tables import align  # noqa: E402
from ttcompile.protos import graph_inputs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLES = 4
TIMEOUT = 900.0
FULL_RANK = ["--format", "svd", "--rank", str(1 << 20), "--force"]
ERROR = re.compile(r"relative error (\S+) vs original")


def run_cli(argv: list[str], timeout: float = TIMEOUT) -> dict:
    """One ``ttcompile`` command as a subprocess: exit code, stderr verdict, printed output errors, seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "ttcompile.cli", *argv], capture_output=True, text=True,
                              timeout=timeout, env=env)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = None, exc.stdout or "", exc.stderr or ""
        out, err = (s.decode(errors="replace") if isinstance(s, bytes) else s for s in (out, err))
    seconds = time.perf_counter() - t0
    lines = err.strip().splitlines()
    errors = [float(v) for v in ERROR.findall(out)]
    problem = f"no result within {timeout:g} s" if code is None else stderr_problem(err)
    if code not in (None, 0, 2, 3):
        problem = f"exit {code}" + (f"; {problem}" if problem else "")
    return {"code": code, "stderr": lines[-1] if lines else "", "traceback": "Traceback" in err,
            "problem": problem, "clean": problem is None,
            "output_error": max(errors) if errors else None, "checks_nothing": "checks nothing" in out,
            "seconds": round(seconds, 1)}


def bench_export(path: Path, formats: list[str], ratio: float, tmp: Path) -> list[dict]:
    proto = onnx.load(str(path), load_external_data=False)
    (inp,) = graph_inputs(proto)
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    data = tmp / f"{path.stem}.npz"
    rng = np.random.default_rng(1)
    np.savez(data, **{inp.name: rng.standard_normal((SAMPLES, *shape[1:])).astype(np.float32)})
    runs = [("inspect", "-", ["inspect", str(path)]),
            ("svd", "full rank", ["compress", str(path), *FULL_RANK])]
    runs += [(f, f"ratio {ratio}", ["compress", str(path), "--format", f, "--ratio", str(ratio)]) for f in formats]
    rows = []
    for fmt, setting, argv in runs:
        if argv[0] == "compress":
            argv += ["-o", str(tmp / f"{path.stem}_{fmt}.onnx"), "--data", str(data), "--quiet"]
        row = {"export": path.stem, "format": fmt, "setting": setting, "argv": argv[0], **run_cli(argv)}
        rows.append(row)
        print(" ".join(_row(row)), flush=True)
    return rows


def _row(r: dict) -> list[str]:
    err = "-" if r["output_error"] is None else f"{r['output_error']:.3g}"
    return [r["export"], r["format"], r["setting"], str(r["code"]), "yes" if r["clean"] else "NO", err,
            "yes" if r["checks_nothing"] else "", f"{r['seconds']:.1f}", r["problem"] or r["stderr"][:90]]


HEADERS = ["export", "format", "setting", "exit", "clean", "out.err", "checks nothing", "s", "stderr / problem"]


def summary(rows: list[dict]) -> list[str]:
    """Per model x run kind: clean/total (exit 3 refusals counted), and full-rank exactness."""
    out = []
    for export in dict.fromkeys(r["export"] for r in rows):
        mine = [r for r in rows if r["export"] == export]
        full = next((r for r in mine if r["setting"] == "full rank"), None)
        exact = "-" if full is None or full["output_error"] is None else \
            f"{full['output_error']:.2e} (exit {full['code']})"
        out.append([export, f"{sum(r['clean'] for r in mine)}/{len(mine)}", str(sum(r["code"] == 3 for r in mine)),
                    str(sum(r["traceback"] for r in mine)), exact, f"{sum(r['seconds'] for r in mine):.0f}"])
    return align(["export", "clean", "exit 3", "tracebacks", "full-rank out.err", "s"], out)


def _finite(obj):
    """JSON without NaN/inf: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=cache_dir() / "tv", help="tv_export.py's output folder")
    p.add_argument("--models", help="only these architectures (default: all in the manifest)")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--out", type=Path, default=RESULTS / "torchvision_exports", help="results stem (.md, .json)")
    args = p.parse_args(argv)
    manifest = json.loads((args.dir / "manifest.json").read_text())
    wanted = set(args.models.split(",")) if args.models else None
    exports = [e for e in manifest["exports"] if wanted is None or e["model"] in wanted]
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for e in exports:
            if "file" in e:
                if sha256(args.dir / e["file"]) != e["sha256"]:
                    raise SystemExit(f"{args.dir / e['file']}: SHA-256 differs from manifest.json; re-export")
                rows += bench_export(args.dir / e["file"], args.formats.split(","), args.ratio, Path(tmp))
    wall = time.perf_counter() - t0
    command = "OMP_NUM_THREADS=1 python " + shlex.join(["benchmarks/torchvision_exports.py", *(argv or sys.argv[1:])])
    failed = [e for e in exports if "error" in e]
    md = [f"# torchvision exports: inspect and compress in every format (ratio {args.ratio}, no fine-tuning)", "",
          f"`{command}` ({wall:.0f} s wall, 1 thread, {sys.platform}); exports by `benchmarks/tv_export.py` with "
          f"torch {manifest['torch']}, torchvision {manifest['torchvision']} (random init, seed {manifest['seed']}, "
          f"fixed batch 1; {SAMPLES} standard-normal comparison images).", "",
          "Clean: exit 0, 2 or 3 with at most one stderr line and no traceback, in time; exit 3 is the "
          "verification gate refusing (nothing written). `full rank`: svd at every layer's rank cap, forced.", "",
          "```", *summary(rows), "```", "", "```", *align(HEADERS, [_row(r) for r in rows]), "```", "",
          *(["Export failures (torch's exporter, not ttcompile):", "",
             *[f"- {e['model']} {e['exporter']}: {e['error']}" for e in failed], ""] if failed else [])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out.with_suffix(".md"), "\n".join(md).encode())
    write_bytes_atomic(args.out.with_suffix(".json"), (json.dumps(_finite(
        {"command": command, "wall_seconds": round(wall, 1), "ratio": args.ratio, "samples": SAMPLES,
         "manifest": manifest, "rows": rows}), indent=1, allow_nan=False) + "\n").encode())
    print("\n".join(md))
    return 0 if all(r["clean"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
