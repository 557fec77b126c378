"""The `medsemi` command. Heavy imports happen inside each verb so that `--help` is instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TRAIN_EPILOG = """\
examples:
  medsemi train configs/acdc/mean_teacher.yaml data.labeled=7 run.dir=runs/mt7
  medsemi train configs/acdc/bcp.yaml --resume run.dir=runs/bcp3     # continue a killed run
"""


def _train(args: argparse.Namespace) -> int:
    from medsemi.config import load_config
    from medsemi.engine.trainer import train

    config = load_config(args.config, args.overrides)
    run_dir = train(config, resume=args.resume, overwrite=args.overwrite)
    print(f"run folder: {run_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from medsemi.eval.evaluate import evaluate_run

    summary = evaluate_run(Path(args.run), split=args.split, checkpoint=args.checkpoint, limit=args.limit)
    out = Path(args.run) / "eval" / f"{args.split}_{summary['checkpoint']}"
    print((out / "summary.md").read_text())
    return 0


def _predict(args: argparse.Namespace) -> int:
    from medsemi.eval.predict import predict_files

    written = predict_files(
        Path(args.run), [Path(p) for p in args.inputs], Path(args.output), checkpoint=args.checkpoint
    )
    for path in written:
        print(path)
    return 0


def _list(args: argparse.Namespace) -> int:
    from medsemi.data.registry import list_datasets
    from medsemi.methods import list_methods
    from medsemi.nets import list_nets

    for title, names in (
        ("methods", list_methods()),
        ("networks", list_nets()),
        ("datasets", list_datasets()),
    ):
        print(f"{title}: {', '.join(names)}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from medsemi.data.check import check_dataset, describe

    problems = check_dataset(Path(args.path), args.dataset)
    print(describe(Path(args.path), args.dataset))
    for problem in problems:
        print(f"PROBLEM {problem.path}: {problem.message}")
    print(f"{len(problems)} problem(s) found in {args.path}")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsemi", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser(
        "train",
        help="train a method from a YAML config",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="YAML config (configs/<dataset>/<method>.yaml)")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.iterations=1000")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue the run in run.dir from its last checkpoint"
    )
    mode.add_argument("--overwrite", action="store_true", help="delete an existing run.dir and start again")
    train.set_defaults(handler=_train)

    evaluate = verbs.add_parser("evaluate", help="evaluate a trained run on a split")
    evaluate.add_argument("run", help="run folder")
    evaluate.add_argument("--split", default="test", choices=["val", "test"])
    evaluate.add_argument("--checkpoint", default="best", choices=["best", "last"])
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate only the first N cases")
    evaluate.set_defaults(handler=_evaluate)

    predict = verbs.add_parser("predict", help="segment NIfTI/PNG files with a trained run")
    predict.add_argument("run", help="run folder")
    predict.add_argument("inputs", nargs="+", help="image files (NIfTI or PNG)")
    predict.add_argument("-o", "--output", required=True, help="output folder")
    predict.add_argument("--checkpoint", default="best", choices=["best", "last"])
    predict.set_defaults(handler=_predict)

    listing = verbs.add_parser("list", help="list methods, networks and datasets")
    listing.set_defaults(handler=_list)

    data = verbs.add_parser("data", help="dataset tools")
    data_verbs = data.add_subparsers(dest="data_verb", required=True)
    check = data_verbs.add_parser("check", help="validate a dataset folder and report every problem")
    check.add_argument("path")
    check.add_argument("--dataset", default=None, help="layout (acdc, la, nnunet); detected when omitted")
    check.set_defaults(handler=_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, FloatingPointError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"medsemi {args.verb}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
