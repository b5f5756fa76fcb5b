"""The runs of ``benchmarks/robustness.py``: every command against the corpus of ``robustness_corpus``,
hostile option values, output paths that collide with inputs or are not files, and interrupts.

``build(root, plan, analysis)`` writes the input files under ``root/in`` and returns the cases: a name, a
class, the ttcompile argv (``{in}`` and ``{out}`` stand for the input folder and the case's own output
folder) and the exit codes that count as right for it.
"""

from __future__ import annotations

from pathlib import Path

from robustness_corpus import ANY, Case, analyses, external, models, npz, plans


def _option_cases(good: str) -> list[Case]:
    c = ["compress", good, "-o", "{out}/o.onnx", "--quiet"]
    b = ["bench", good, "--repeats", "1", "--min-time", "0", "--batch", "1"]
    t = ["finetune", "{in}/student.onnx", "--teacher", good, "--train", "{in}/data_ok.npz", "-o", "{out}/ft.onnx",
         "--quiet", "--epochs", "1"]
    bad = {
        "samples -5": c + ["--samples", "-5"], "samples 0": c + ["--samples", "0"],
        "samples 1e9": c + ["--samples", "1000000000"], "threads -4": c + ["--threads", "-4"],
        "ratio 0": c + ["--ratio", "0"], "ratio 2": c + ["--ratio", "2"], "ratio nan": c + ["--ratio", "nan"],
        "ratio inf": c + ["--ratio", "inf"], "rank 0": c + ["--rank", "0"], "rank -1": c + ["--rank", "-1"],
        "format bogus": c + ["--format", "bogus"], "modes bad": c + ["--modes", "fc1=abc"],
        "modes unknown layer": c + ["--modes", "nope=8x8:8x12", "--rank", "2"],
        "input-shape typo": c + ["--input-shape", "typo=1x64"],
        "input-shape negative": c + ["--input-shape", "x=-1x64"],
        "input-shape huge": c + ["--input-shape", "x=1000000000000x64"],
        "input-shape rank": c + ["--input-shape", "x=1x2x64"], "input-shape text": c + ["--input-shape", "x=ax64"],
        "max-error -1": c + ["--max-error", "-1"], "max-error nan": c + ["--max-error", "nan"],
        "max-error tiny": c + ["--max-error", "1e-30", "--rank", "2", "--force"],
        "budget garbage": c + ["--budget", "params=abc"], "budget negative": c + ["--budget", "params=-1"],
        "bench batch 1e9": b[:-1] + ["1000000000"], "bench batch 0": b[:-1] + ["0"], "bench batch text": b[:-1] + ["a"],
        "bench min-time inf": b + ["--min-time", "inf"], "bench min-time nan": b + ["--min-time", "nan"],
        "bench min-time -1": b + ["--min-time", "-1"], "bench repeats 0": b + ["--repeats", "0"],
        "bench threads -4": b + ["--threads", "-4"], "bench provider": b + ["--provider", "tpu"],
        "analyze batch 0": ["analyze", good, "--calib", "{in}/data_ok.npz", "-o", "{out}/a.json", "--batch", "0"],
        "analyze holdout 2": ["analyze", good, "--calib", "{in}/data_ok.npz", "-o", "{out}/a.json", "--holdout", "2"],
        "finetune epochs -1": t + ["--epochs", "-1"], "finetune lr inf": t + ["--lr", "inf"],
        "finetune batch 0": t + ["--batch-size", "0"], "finetune threads -4": t + ["--threads", "-4"],
        "finetune temperature 0": t + ["--temperature", "0"],
        "compress train epochs -1": c + ["--train", "{in}/data_ok.npz", "--finetune-epochs", "-1"],
        "unknown option": c + ["--frobnicate"], "no command": [],
    }
    outs = {
        "-o a folder": ["compress", good, "-o", "{out}", "--rank", "2"],
        "-o .": ["compress", good, "-o", ".", "--rank", "2"], "-o empty": ["compress", good, "-o", ""],
        "-o a FIFO": ["compress", good, "-o", "{in}/fifo", "--rank", "2"],  # not /dev/null: root could replace it
        "-o missing folder": ["compress", good, "-o", "{out}/new/o.onnx", "--rank", "2"],
        "-o read-only folder": ["compress", good, "-o", "{in}/readonly/o.onnx", "--rank", "2"],
        "-o = MODEL": ["compress", good, "-o", good, "--rank", "2"],
        "-o = --data": ["compress", good, "-o", "{in}/data_ok.npz", "--data", "{in}/data_ok.npz", "--rank", "2"],
        "-o = --plan": ["compress", good, "-o", "{in}/good.plan.json", "--plan", "{in}/good.plan.json"],
        "plan of -o = --plan": ["compress", good, "-o", "{in}/q.onnx", "--plan", "{in}/q.plan.json"],
        "-o = --analysis": ["compress", good, "-o", "{in}/analysis.json", "--budget", "params=0.3",
                            "--analysis", "{in}/analysis.json"],
        "-o = --train": ["compress", good, "-o", "{in}/data_ok.npz", "--train", "{in}/data_ok.npz"],
        "analyze -o = MODEL": ["analyze", good, "--calib", "{in}/data_ok.npz", "-o", good],
        "analyze -o = --calib": ["analyze", good, "--calib", "{in}/data_ok.npz", "-o", "{in}/data_ok.npz"],
        "bench --json = MODEL": b + ["--json", good], "bench --json folder": b + ["--json", "{out}"],
        "finetune -o = teacher": t[:-5] + [good, "--quiet"],
        "finetune --checkpoint = teacher": t + ["--checkpoint", good],
        "finetune --checkpoint = --train": t + ["--checkpoint", "{in}/data_ok.npz"],
        "finetune -o = MODEL": t[:7] + ["-o", "{in}/student.onnx", "--quiet"],
    }
    return ([Case(f"option {k}", "options", v, (2,)) for k, v in bad.items() if k != "max-error tiny"]
            + [Case("option max-error tiny", "options", bad["max-error tiny"], (3,))]
            + [Case(f"output {k}", "output paths", v + (["--quiet"] if v[0] == "compress" else []), (2,))
               for k, v in outs.items()])


def build(root: Path, good_plan: dict, good_analysis: dict) -> list[Case]:
    """Write every input under ``root/in``; returns the cases. ``good_plan``/``good_analysis``: valid JSON
    for ``root/in/good.onnx`` (the caller makes them with ttcompile itself, see ``robustness.prepare``)."""
    folder = root / "in"
    cases: list[Case] = []
    files = models()
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.SerializeToString()
        (folder / name).write_bytes(data)
    model_names = [*files, *external(folder)]
    fine = {"good.onnx": 0, "conv.onnx": 0, "ext_ok.onnx": 0, "conv_bias_input.onnx": 0, "batch_1.onnx": 0,
            "float64.onnx": 0}
    for name in model_names:
        kind = "external data" if name.startswith("ext_") else "model files"
        expect = (fine[name],) if name in fine else ANY
        cases.append(Case(f"inspect {name}", kind, ["inspect", f"{{in}}/{name}"], ANY if name != "good.onnx" else (0,)))
        cases.append(Case(f"compress {name}", kind, ["compress", f"{{in}}/{name}", "-o", "{out}/o.onnx", "--rank",
                                                     "2", "--force", "--allow-more-macs", "--quiet"], expect,
                          outputs=["o.onnx", "o.plan.json"]))
    for name in ("good.onnx", "float16.onnx", "custom_domain.onnx", "opset30.onnx", "bfloat16_input.onnx",
                 "dims_1e12.onnx", "float64_conv.onnx"):
        cases.append(Case(f"bench {name}", "model files", ["bench", f"{{in}}/{name}", "--batch", "1", "--repeats",
                                                           "1", "--min-time", "0"],
                          (0,) if name == "good.onnx" else ANY))
    for fmt in ("tt", "tr", "tucker", "cp", "svd", "stt", "str", "sttu"):
        cases.append(Case(f"compress {fmt} float64_conv.onnx", "model files",
                          ["compress", "{in}/float64_conv.onnx", "-o", "{out}/o.onnx", "--format", fmt, "--rank", "2",
                           "--force", "--allow-more-macs", "--quiet"], ANY, outputs=["o.onnx", "o.plan.json"]))
        cases.append(Case(f"compress {fmt} conv_bias_input.onnx", "model files",
                          ["compress", "{in}/conv_bias_input.onnx", "-o", "{out}/o.onnx", "--format", fmt, "--rank",
                           "1000", "--force", "--allow-more-macs", "--quiet", "--max-error", "1e-4"], (0,),
                          outputs=["o.onnx", "o.plan.json"]))
    good = "{in}/good.onnx"
    for name in ("custom_domain.onnx", "opset30.onnx", "float64.onnx", "float16.onnx", "bfloat16_input.onnx",
                 "dims_1e12.onnx", "duplicate_names.onnx", "nan_weight.onnx", "bad_utf8_name.onnx",
                 "ext_symlink_out.onnx", "batch_1.onnx", "truncated3.onnx"):
        kind = "external data" if name.startswith("ext_") else "model files"
        cases.append(Case(f"analyze {name}", kind, ["analyze", f"{{in}}/{name}", "--calib", "{in}/data_ok.npz",
                                                    "-o", "{out}/a.json", "--quiet"], outputs=["a.json"]))
        cases.append(Case(f"finetune --teacher {name}", kind,
                          ["finetune", "{in}/student.onnx", "--teacher", f"{{in}}/{name}", "--train",
                           "{in}/data_ok.npz", "-o", "{out}/ft.onnx", "--epochs", "1", "--quiet"],
                          outputs=["ft.onnx", "ft.onnx.ckpt"]))
    for name in npz(folder):
        ok = (0,) if name == "data_ok.npz" else (2,)
        cases += [
            Case(f"compress --data {name}", "data files", ["compress", good, "-o", "{out}/o.onnx", "--rank", "2",
                                                          "--force", "--data", f"{{in}}/{name}", "--quiet"], ok,
                 outputs=["o.onnx", "o.plan.json"]),
            Case(f"analyze --calib {name}", "data files", ["analyze", good, "--calib", f"{{in}}/{name}", "-o",
                                                          "{out}/a.json", "--quiet"], ok, outputs=["a.json"]),
            Case(f"bench --data {name}", "data files", ["bench", good, "--data", f"{{in}}/{name}", "--batch", "1",
                                                       "--repeats", "1", "--min-time", "0"], ok),
            Case(f"finetune --train {name}", "data files", ["finetune", "{in}/student.onnx", "--teacher", good,
                                                           "--train", f"{{in}}/{name}", "-o", "{out}/ft.onnx",
                                                           "--epochs", "1", "--quiet"], ok,
                 outputs=["ft.onnx", "ft.onnx.ckpt"]),
        ]
    for name in plans(folder, good_plan):
        cases.append(Case(f"compress --plan {name}", "plans", ["compress", good, "-o", "{out}/o.onnx", "--plan",
                                                              f"{{in}}/{name}", "--quiet"], (2,)))
    for name in analyses(folder, good_analysis):
        cases.append(Case(f"compress --analysis {name}", "analyses",
                          ["compress", good, "-o", "{out}/o.onnx", "--budget", "params=0.3", "--analysis",
                           f"{{in}}/{name}", "--quiet"], (2,)))
    cases += _option_cases(good)
    cases.append(Case("stale temp of a dead process", "interrupts", ["compress", good, "-o", "{out}/o.onnx",
                                                                     "--rank", "2", "--force", "--quiet"], (0,),
                      outputs=["o.onnx", "o.plan.json"]))
    resnet = str(Path(__file__).resolve().parents[1] / "models" / "resnet20_mnist.onnx")
    for after in (2.0, 3.5, 5.0):
        cases.append(Case(f"SIGINT after {after:g} s: compress resnet20 cp", "interrupts",
                          ["compress", resnet, "-o", "{out}/o.onnx", "--format", "cp", "--ratio", "0.3", "--quiet"],
                          (0, 130), interrupt_after=after, outputs=["o.onnx", "o.plan.json"]))
    return cases
