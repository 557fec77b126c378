"""The `medsemi` command. Heavy imports happen inside each verb so that `--help` is instant."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent

TRAIN_EPILOG = """\
examples:
  medsemi train configs/acdc/mean_teacher.yaml data.labeled=7 run.dir=runs/mt7
  medsemi train configs/acdc/bcp.yaml --resume run.dir=runs/bcp3     # continue a killed run

multi-GPU (one process per GPU; data.batch_* stay the global batch, split among the processes):
  torchrun --standalone --nproc_per_node 4 -m medsemi.cli train configs/acdc/mean_teacher.yaml run.dir=runs/mt
  on CPUs the same command uses gloo; on several nodes run torchrun --nnodes N --node_rank I
  --rdzv_endpoint HOST:PORT ... on each. Only rank 0 writes the run folder (docs/how-to/multi-gpu.md).
"""


def _train(args: argparse.Namespace) -> int:
    from medsemi.config import load_config
    from medsemi.engine.trainer import train

    config = load_config(args.config, args.overrides)
    run_dir = train(config, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        print(f"run folder: {run_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from medsemi.eval.evaluate import evaluate_run

    summary = evaluate_run(
        Path(args.run),
        split=args.split,
        checkpoint=args.checkpoint,
        limit=args.limit,
        recalibrate_bn=args.recalibrate_bn,
    )
    print((summary["folder"] / "summary.md").read_text())
    return 0


def _predict(args: argparse.Namespace) -> int:
    from medsemi.eval.predict import predict_files

    results = predict_files(
        Path(args.run),
        [Path(p) for p in args.inputs],
        Path(args.output),
        checkpoint=args.checkpoint,
        uncertainty=args.uncertainty,
        overlay=args.overlay,
    )
    for result in results:
        print(result.mask)
        if result.uncertainty is not None:
            print(result.uncertainty)
        if result.overlays:
            print(f"{result.overlays[0].parent}/ ({len(result.overlays)} overlay PNGs)")
    return 0


def _suggest(args: argparse.Namespace) -> int:
    from medsemi.suggest import suggest, write_suggestions

    ranking = suggest(
        Path(args.run),
        args.budget,
        checkpoint=args.checkpoint,
        diversity=args.diversity,
        max_cases=args.max_cases,
        time_limit=args.time_limit,
        batch_size=args.batch_size,
    )
    path = write_suggestions(ranking.picks, Path(args.output))
    per_thousand = 1000 * ranking.seconds / max(ranking.scored_cases, 1)
    print(
        f"scored {ranking.scored_cases} of {ranking.pool_cases} pool cases in {ranking.seconds:.1f} s "
        f"({per_thousand:.1f} s per 1000 cases)"
    )
    if ranking.unscored_patients:
        names = ", ".join(ranking.unscored_patients[:5]) + (", ..." if len(ranking.unscored_patients) > 5 else "")
        print(f"not ranked: {len(ranking.unscored_patients)} patients with no scored case ({names})")
    for pick in ranking.picks:
        print(f"{pick.rank:>3}  {pick.patient}  uncertainty {pick.uncertainty:.4f}  value {pick.value:.4f}")
    if len(ranking.picks) < args.budget:
        print(f"only {len(ranking.picks)} unlabeled patients ranked (budget {args.budget})")
    print(f"written: {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from medsemi.export import export_onnx

    report = export_onnx(Path(args.run), Path(args.output), checkpoint=args.checkpoint, opset=args.opset)
    print(
        f"{report.path}: input {report.input_shape}, classes {report.classes}; onnxruntime vs PyTorch max "
        f"|difference| {report.max_abs_difference:.2e} (tolerance {report.tolerance:g})"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    from medsemi.data.registry import list_datasets
    from medsemi.methods import list_methods
    from medsemi.nets import list_blocks, list_nets

    if args.options is not None:
        return _list_options(args.options)

    for title, names in (
        ("methods", list_methods()),
        ("networks", list_nets()),
        ("blocks", list_blocks()),
        ("datasets", list_datasets()),
    ):
        print(f"{title}: {', '.join(names)}")
    return 0


def _list_options(method: str) -> int:
    """Every option of one method (or of all, for "") with its type, default and schedule unit."""
    from medsemi.methods import list_methods
    from medsemi.methods.base import method_class
    from medsemi.methods.options import options_text

    for name, cls in [(name, method_class(name)) for name in ([method] if method else list_methods())]:
        print(f"{name}:")
        print("\n".join(options_text(cls.Options)))
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from medsemi.data.check import inspect_dataset

    report = inspect_dataset(Path(args.path), args.dataset)
    problems = report.problems
    print(report.summary)
    for problem in problems:
        print(f"PROBLEM {problem.path}: {problem.message}")
    for warning in report.warnings:
        print(f"WARNING {warning.path}: {warning.message}")
    print(f"{len(problems)} problem(s) found in {args.path}")
    return 1 if problems else 0


def _data_example(args: argparse.Namespace) -> int:
    from medsemi.data.examples import EXAMPLES

    root = EXAMPLES[args.kind](Path(args.path))
    print(f"{root}: example {args.kind} dataset written; next: medsemi data check {root}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from medsemi.bench.runner import run_from_args

    return run_from_args(args)


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
    mode.add_argument("--resume", action="store_true", help="continue the run in run.dir from its last checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="delete an existing run.dir and start again")
    train.set_defaults(handler=_train)

    evaluate = verbs.add_parser("evaluate", help="evaluate a trained run on a split")
    evaluate.add_argument("run", help="run folder")
    evaluate.add_argument("--split", default="test", choices=["val", "test"])
    evaluate.add_argument("--checkpoint", default="best", choices=["best", "last"])
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate only the first N cases")
    evaluate.add_argument(
        "--recalibrate-bn",
        type=int,
        default=0,
        metavar="N",
        help="first re-estimate BatchNorm statistics with dropout off on N training batches (separate _bnN tables)",
    )
    evaluate.set_defaults(handler=_evaluate)

    predict = verbs.add_parser("predict", help="segment NIfTI/PNG files with a trained run")
    predict.add_argument("run", help="run folder")
    predict.add_argument("inputs", nargs="+", help="image files (NIfTI or PNG)")
    predict.add_argument("-o", "--output", required=True, help="output folder")
    predict.add_argument("--checkpoint", default="best", choices=["best", "last"])
    predict.add_argument(
        "--no-uncertainty",
        dest="uncertainty",
        action="store_false",
        help="skip <name>_uncertainty (entropy of the mean softmax over flips and ensemble members)",
    )
    predict.add_argument("--overlay", action="store_true", help="also write <name>_overlay/ with a PNG per slice")
    predict.set_defaults(handler=_predict)

    suggest = verbs.add_parser("suggest", help="rank the unlabeled patients of a run: what to annotate next")
    suggest.add_argument("run", help="run folder")
    suggest.add_argument("--budget", type=int, required=True, help="how many patients to pick")
    suggest.add_argument("-o", "--output", required=True, help="CSV to write")
    suggest.add_argument("--checkpoint", default="best", choices=["best", "last"])
    suggest.add_argument(
        "--diversity",
        type=float,
        default=1.0,
        help="0..1: how much similarity to earlier picks discounts a patient (0 = uncertainty only)",
    )
    suggest.add_argument(
        "--max-cases", type=int, default=None, help="score only N pool cases, sampled evenly across the patients"
    )
    suggest.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="stop scoring after SECONDS (patients are visited round robin, so all are sampled alike)",
    )
    suggest.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="network inputs per forward pass: slices x their flips (default: the run's eval.batch_size)",
    )
    suggest.set_defaults(handler=_suggest)

    export = verbs.add_parser("export", help="export the predictor to ONNX, checked against PyTorch")
    export.add_argument("run", help="run folder")
    export.add_argument("-o", "--output", required=True, help="model file, e.g. model.onnx")
    export.add_argument("--checkpoint", default="best", choices=["best", "last"])
    export.add_argument("--opset", type=int, default=17)
    export.set_defaults(handler=_export)

    listing = verbs.add_parser("list", help="list methods, networks and datasets (or a method's options)")
    listing.add_argument(
        "--options",
        nargs="?",
        const="",
        metavar="METHOD",
        help="print every option of METHOD (default: of every method) with its type, default and unit",
    )
    listing.set_defaults(handler=_list)

    data = verbs.add_parser("data", help="dataset tools")
    data_verbs = data.add_subparsers(dest="data_verb", required=True)
    check = data_verbs.add_parser("check", help="validate a dataset folder and report every problem")
    check.add_argument("path")
    check.add_argument("--dataset", default=None, help="layout (acdc, la, nnunet); detected when omitted")
    check.set_defaults(handler=_data_check)
    example = data_verbs.add_parser(
        "example", help="write a small example dataset (nnU-Net folder) to follow docs/how-to/own-data.md"
    )
    example.add_argument("kind", choices=["png", "nifti"], help="png: 2D OCT-like patches; nifti: 3D volumes")
    example.add_argument("path", help="a new (or empty) folder")
    example.set_defaults(handler=_data_example)

    from medsemi.bench.arguments import add_bench_arguments  # argparse only: --help stays fast

    bench = verbs.add_parser("bench", help="methods x budgets x seeds -> leaderboard (or --throughput)")
    add_bench_arguments(bench)
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.verb != "train" or any(item.startswith("-") or "=" not in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(args.verb, warnings.showwarning)
        try:
            return args.handler(args)
        except (ValueError, KeyError, FileNotFoundError, FileExistsError, FloatingPointError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"medsemi {args.verb}: error: {message}", file=sys.stderr)
            return 2


def _one_line_warnings(verb: str, default: Callable[..., None]) -> Callable[..., None]:
    """medsemi's own warnings as one line, like its errors; other libraries' in their usual form."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: Any) -> None:
        if Path(filename).resolve().is_relative_to(PACKAGE):
            print(f"medsemi {verb}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, *rest)

    return show


if __name__ == "__main__":
    sys.exit(main())
