"""``ttcompile finetune MODEL --teacher ORIGINAL --train D -o OUT``: distil ORIGINAL into MODEL's weights."""

from __future__ import annotations

import argparse
from pathlib import Path

import ttcompile
from ttcompile.cli.argtypes import batch_int, count_int, float_in, positive_float, threads_int
from ttcompile.graph import save_model
from ttcompile.modelfile import input_files, output_files
from ttcompile.paths import check_outputs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="student .onnx, e.g. the output of compress (never overwritten)")
    p.add_argument("--teacher", required=True, metavar="ORIGINAL", help="the uncompressed .onnx to learn from")
    p.add_argument("--train", required=True, metavar="D", help="path.npz | mnist[:split] | digits[:split]")
    p.add_argument("--val", metavar="D", help="validation data: accuracy with labels, else top-1 agreement "
                   "with the teacher; the best epoch is kept (default: the last epoch)")
    p.add_argument("-o", "--output", required=True, help="fine-tuned model to write (same graph, new weights)")
    p.add_argument("--epochs", type=count_int, default=10)
    p.add_argument("--lr", type=positive_float, default=1e-3, help="peak learning rate (cosine decay to 0)")
    p.add_argument("--batch-size", type=batch_int, default=128)
    p.add_argument("--temperature", type=positive_float, default=4.0, help="distillation temperature")
    p.add_argument("--kd-weight", type=float_in(0.0, 1.0, low_open=False), default=0.9,
                   help="weight of the distillation term; the rest goes to cross-entropy on labels")
    p.add_argument("--weight-decay", type=float_in(0.0, low_open=False), default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", metavar="PATH", help="saved after every epoch (default: OUT.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    p.add_argument("--threads", type=threads_int, default=0, help="torch and ORT threads (0: their defaults)")
    p.add_argument("--backend", choices=["torch", "ort"], default="torch",
                   help="torch (the [train] extra) or onnxruntime-training (the [ort-training] extra, no torch)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    src, out = Path(args.model), Path(args.output)
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".ckpt")
    inputs = [*input_files("MODEL", src), *input_files("--teacher", args.teacher), ("--train", args.train),
              ("--val", args.val)]
    check_outputs(inputs, [*output_files("-o", out), ("--checkpoint", checkpoint)])
    if args.resume and checkpoint.exists():
        print(f"resuming from {checkpoint}")
    result = ttcompile.finetune(
        src, args.teacher, args.train, val=args.val, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        temperature=args.temperature, kd_weight=args.kd_weight, weight_decay=args.weight_decay, seed=args.seed,
        checkpoint=checkpoint, resume=args.resume, threads=args.threads or None, backend=args.backend,
        progress=not args.quiet)
    save_model(result.model, out)
    history = result.history
    if history.metric is not None:
        teacher_val = "" if history.teacher_val is None else f", teacher {history.teacher_val:.4f}"
        if history.best_epoch == 0:
            top = max(history.epochs, key=lambda e: e.val)
            print(f"no epoch beat the input on val: kept its weights (val {history.metric} {history.initial_val:.4f}; "
                  f"best epoch {top.epoch}: {top.val:.4f}){teacher_val}")
        else:
            best = next(e for e in history.epochs if e.epoch == history.best_epoch)
            before = "" if history.initial_val is None else f", before fine-tuning {history.initial_val:.4f}"
            print(f"best epoch {best.epoch}: val {history.metric} {best.val:.4f}{before}{teacher_val}")
    print(f"wrote {out} (checkpoint {checkpoint})")
    return 0
