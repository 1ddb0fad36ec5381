"""The `dicom-node train`, `dicom-node evaluate` and `dicom-node crossval` commands (wiring only;
docs/training.md).

Importing this module is cheap: torch and the training code load only when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _grid(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"grid is N or DxHxW, got {text!r}")
    return (parts[0], parts[1], parts[2])


def _patients(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest", type=Path, required=True, help="CSV of labelled series (docs/training.md)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder: checkpoints, curves, package")
    parser.add_argument("--architecture", default="resnet10", choices=["resnet10", "resnet18", "resnet34"])
    parser.add_argument("--width", type=int, default=32, help="channels of the first stage (default 32)")
    parser.add_argument("--grid", type=_grid, default=(128, 128, 128), help="input grid, N or DxHxW (128)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples-per-epoch", type=int, default=64, help="augmented samples per epoch")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--class-weights", action="store_true", help="weight the loss by inverse frequency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="CPU threads (default: the CPUs this process may use)")
    parser.add_argument("--cache-dir", type=Path, help="where tarballs are unpacked (~/.cache/dicom-node)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--stop-after", type=int, help="stop after this many epochs of this run (continue with --resume)"
    )
    parser.add_argument("--name", default="ct-classifier", help="package name")
    parser.add_argument("--version", dest="package_version", default="0.1.0", help="package version")
    parser.add_argument("--description", default="CT series classifier trained with `dicom-node train`")
    parser.add_argument("--no-augment", action="store_true", help="train on the series as they are")


def _config(args: argparse.Namespace) -> object:
    from node.training.augment import NO_AUGMENTATION, AugmentConfig
    from node.training.train import TrainConfig

    return TrainConfig(
        manifest=args.manifest,
        out=args.out,
        package_dir=getattr(args, "package_dir", None),
        architecture=args.architecture,
        width=args.width,
        grid=args.grid,
        epochs=args.epochs,
        samples_per_epoch=args.samples_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        val_patients=getattr(args, "val_patients", ()) or (),
        val_fraction=getattr(args, "val_fraction", 0.25),
        seed=args.seed,
        class_weights=args.class_weights,
        select=getattr(args, "select", "last"),
        device=args.device,
        threads=args.threads,
        progress=not args.quiet,
        resume=args.resume,
        stop_after=args.stop_after,
        cache_dir=args.cache_dir,
        augment=NO_AUGMENTATION if args.no_augment else AugmentConfig(),
        name=args.name,
        version=args.package_version,
        description=args.description,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from node.training.train import TrainConfig, train

    config = _config(args)
    assert isinstance(config, TrainConfig)
    train(config)
    return 0


def cmd_crossval(args: argparse.Namespace) -> int:
    from node.training.crossval import crossval
    from node.training.train import TrainConfig

    config = _config(args)
    assert isinstance(config, TrainConfig)
    crossval(config, package_dir=args.package_dir)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from node.classify.package import ModelPackageError
    from node.training.evaluate import evaluate

    try:
        evaluate(
            args.model,
            args.manifest,
            args.out,
            views=args.views,
            device=args.device,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            progress=not args.quiet,
            threads=args.threads,
        )
    except ModelPackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_training_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """`dicom-node train`, `dicom-node evaluate`, `dicom-node crossval` (called by node.cli.build_parser)."""
    train = sub.add_parser(
        "train", parents=[common], help="train a model package on a manifest of labelled series"
    )
    _add_training_options(train)
    split = train.add_mutually_exclusive_group()
    split.add_argument("--val-patients", type=_patients, help="validation patients, e.g. P2,P5")
    split.add_argument(
        "--val-fraction", type=float, default=0.25, help="fraction of patients for validation (0: none)"
    )
    train.add_argument("--select", choices=["last", "best"], default="last", help="weights to package")
    train.add_argument("--package-dir", type=Path, help="where to write the package (default <out>/package)")
    train.set_defaults(func=cmd_train)

    crossval = sub.add_parser(
        "crossval", parents=[common], help="leave-one-patient-out accuracy with 95%% intervals"
    )
    _add_training_options(crossval)
    crossval.add_argument(
        "--package-dir", type=Path, help="then train the final model on all patients and write it here"
    )
    crossval.set_defaults(func=cmd_crossval)

    evaluate = sub.add_parser(
        "evaluate", parents=[common], help="accuracy of a model package on a manifest, with 95%% intervals"
    )
    evaluate.add_argument("--model", type=Path, required=True, help="model package folder")
    evaluate.add_argument("--manifest", type=Path, required=True)
    evaluate.add_argument("--out", type=Path, default=Path("evaluation"), help="metrics, PNGs (./evaluation)")
    evaluate.add_argument(
        "--views",
        choices=["original", "augmented"],
        default="original",
        help="augmented: also score reformats and crops of each series (reported apart)",
    )
    evaluate.add_argument("--batch-size", type=int, default=4)
    evaluate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate.add_argument("--threads", type=int)
    evaluate.add_argument("--cache-dir", type=Path)
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate)
