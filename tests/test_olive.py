"""The Olive pass (ttcompile.integrations.olive): importing ttcompile needs no olive; with olive-ai
installed the pass resolves from a package config and forwards its options to ttcompile.compress; the
example workflow (slow) runs in the olive venv (TTCOMPILE_OLIVE_PYTHON, default /work/venvs/olive)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "olive_lenet5"
OLIVE_PYTHON = Path(os.environ.get("TTCOMPILE_OLIVE_PYTHON", "/work/venvs/olive/bin/python"))


def test_importing_ttcompile_does_not_import_olive():
    code = "import sys, ttcompile, ttcompile.integrations; assert 'olive' not in sys.modules, 'olive imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_example_package_config_names_the_pass():
    entry = json.loads((EXAMPLE / "package_config.json").read_text())["passes"]["TTCompress"]
    assert entry["module_path"] == "ttcompile.integrations.olive.TTCompress"
    workflow = json.loads((EXAMPLE / "config.json").read_text())
    assert [p["type"] for p in workflow["passes"].values()] == ["TTCompress"]


def test_pass_resolves_and_forwards_options(tmp_path, monkeypatch):
    pytest.importorskip("olive", reason="olive-ai not installed (the [olive] extra; see examples/olive_lenet5)")
    from olive.hardware import DEFAULT_CPU_ACCELERATOR
    from olive.model import ONNXModelHandler
    from olive.package_config import OlivePackageConfig

    import ttcompile
    from ttcompile.integrations import olive as integration

    calls = []

    class Saved:
        def save(self, path):
            Path(path).write_bytes((ROOT / "models" / "lenet5_mnist.onnx").read_bytes())
            return Path(path)

    monkeypatch.setattr(ttcompile, "compress", lambda model, **kw: calls.append((model, kw)) or Saved(),
                        raising=False)
    packages = OlivePackageConfig.parse_file_or_obj(integration.package_config())
    cls = packages.import_pass_module("TTCompress")
    assert cls is integration.TTCompress and "onnxpeepholeoptimizer" in packages.passes  # Olive's own kept
    config = cls.generate_config(DEFAULT_CPU_ACCELERATOR, {"format": "tr", "budget": "params=0.1", "ranks": 4},
                                 disable_search=True)
    out = cls(DEFAULT_CPU_ACCELERATOR, config).run(ONNXModelHandler(str(ROOT / "models" / "lenet5_mnist.onnx")),
                                                   str(tmp_path / "out"))
    assert calls == [(str(ROOT / "models" / "lenet5_mnist.onnx"), {"format": "tr", "ranks": 4,
                                                                  "budget": "params=0.1"})]
    assert Path(out.model_path) == tmp_path / "out" / "model.onnx" and Path(out.model_path).is_file()


@pytest.mark.slow
def test_example_workflow_compresses_and_evaluates(tmp_path):
    if not OLIVE_PYTHON.is_file():
        pytest.skip(f"no olive interpreter at {OLIVE_PYTHON} (set TTCOMPILE_OLIVE_PYTHON; create it with "
                    "python3 -m venv /work/venvs/olive && /work/venvs/olive/bin/pip install -e '.[cpu,olive]')")
    config = json.loads((EXAMPLE / "config.json").read_text())
    config |= {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "OLIVE_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(OLIVE_PYTHON), "-m", "olive", "run", "--config", str(tmp_path / "config.json"),
           "--package-config", str(EXAMPLE / "package_config.json")]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    before = json.loads((tmp_path / "out" / "input_model_metrics.json").read_text())
    after = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert before["size-bytes"]["value"] > 5 * after["size-bytes"]["value"]  # budget params=0.1
    assert before["accuracy-accuracy_score"]["value"] > 0.98
    assert after["accuracy-accuracy_score"]["value"] > before["accuracy-accuracy_score"]["value"] - 0.02
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "model.plan.json").is_file()
