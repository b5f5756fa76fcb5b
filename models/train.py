"""Train an image model on MNIST and export it to ONNX with a metrics JSON.

    python -m ttcompile.models.train lenet5 --data mnist --epochs 20 --out lenet5_mnist.onnx

Trains on MNIST train (50k), keeps the epoch with the best accuracy on val (10k), reports test (10k)
accuracy, exports ONNX (BatchNorm folded, dynamic batch) and writes ``<out stem>.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ttcompile.atomic import atomic_path
from ttcompile.errors import UserError
from ttcompile.models.data import load_dataset
from ttcompile.models.export import export_onnx
from ttcompile.models.lenet import LeNet5, LeNet300100
from ttcompile.models.resnet import resnet20, resnet32, resnet56
from ttcompile.models.training import Recipe, accuracy, fit

ADAM = Recipe(optimizer="adam", lr=1e-3, weight_decay=1e-4, batch_size=128, shift=2)
SGD = Recipe(optimizer="sgd", lr=0.1, weight_decay=5e-4, batch_size=128, shift=2)

# name -> (constructor, recipe, default epochs)
ARCHS: dict[str, tuple[Callable[[], nn.Module], Recipe, int]] = {
    "lenet5": (LeNet5, ADAM, 20),
    "lenet300": (LeNet300100, ADAM, 30),
    "resnet20": (resnet20, SGD, 4),
    "resnet32": (resnet32, SGD, 4),
    "resnet56": (resnet56, SGD, 4),
}
# data name -> dataset specs of its (train, val, test) splits
DATA = {"mnist": ("mnist:train", "mnist:val", "mnist:test")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ttcompile.models.train", description=__doc__.splitlines()[0])
    p.add_argument("arch", choices=sorted(ARCHS))
    p.add_argument("--data", choices=sorted(DATA), default="mnist")
    p.add_argument("--epochs", type=int, help="default: per architecture (lenet5 20, lenet300 30, resnet 4)")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write; metrics go to <stem>.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="use only the first N images of each split (smoke runs)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args, argv if argv is not None else sys.argv[1:])
    except UserError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, argv: list[str]) -> int:
    build, recipe, default_epochs = ARCHS[args.arch]
    epochs = default_epochs if args.epochs is None else args.epochs
    if epochs < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--epochs and --limit must be positive")
    torch.set_num_threads(args.threads)
    train, val, test = (load_dataset(spec) for spec in DATA[args.data])
    for ds in (train, val, test):
        ds.x, ds.y = ds.x[:args.limit], ds.y[:args.limit]

    torch.manual_seed(args.seed)
    model = build()
    start = time.perf_counter()
    history = fit(model, train.x, train.y, val.x, val.y, epochs=epochs, recipe=recipe, seed=args.seed,
                  progress=not args.quiet)
    train_seconds = time.perf_counter() - start
    test_acc = accuracy(model, test.x, test.y)
    print(f"{args.arch}: best epoch {history.best_epoch}/{epochs}, "
          f"val {100 * history.val_acc[history.best_epoch - 1]:.2f}%, test {100 * test_acc:.2f}%, "
          f"{train_seconds / 60:.1f} min")

    export_onnx(model, torch.from_numpy(test.x[:2]), args.out)
    metrics = {
        "arch": args.arch,
        "data": args.data,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": epochs,
        "best_epoch": history.best_epoch,
        "val_acc": history.val_acc[history.best_epoch - 1],
        "test_acc": test_acc,
        "n_train": len(train.x), "n_val": len(val.x), "n_test": len(test.x),
        "seed": args.seed,
        "recipe": vars(recipe) | {"schedule": "cosine per step", "select": "best val epoch"},
        "train_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "command": shlex.join(["python", "-m", "ttcompile.models.train", *argv]),
        "history": history.as_dict(),
    }
    metrics_path = args.out.with_suffix(".json")
    with atomic_path(metrics_path, parents=True) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {args.out} and {metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
