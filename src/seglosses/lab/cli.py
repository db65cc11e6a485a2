"""The ``seglosses`` command: train, evaluate, compare, report, audit, losses and demo.

Each command is a small function over the Python API (:mod:`seglosses.lab.config`,
:func:`seglosses.lab.train.train`, :mod:`seglosses.lab.compare`, :mod:`seglosses.lab.report`,
:mod:`seglosses.lab.audit`). Bad input (a missing file, a config typo, an unknown loss or preset)
ends in one line on stderr naming the closest valid names and exit status 2, never a traceback
(set ``SEGLOSSES_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEMO_CONFIGURATIONS", "DEMO_ENVELOPE_PRESET", "build_parser", "demo_grid", "main"]

DEMO_ENVELOPE_PRESET = "bsigma_class"
"""The envelope preset the demo trains beside plain training: class-conditional Bottom-all-but-sigma (every image
weighs 1; inside each image the high-loss tail of each annotated class is dropped), the pixel rule that cost least
under noise in the accuracy study. It did not beat plain training there, which stays the recommendation
(docs/envelope.md). One line to change."""

DEMO_CONFIGURATIONS = {
    "erm_dice_ce": ["envelope=none"],
    f"envelope_{DEMO_ENVELOPE_PRESET}": [f"envelope.preset={DEMO_ENVELOPE_PRESET}"],
    "paper_best": ["envelope.preset=paper_best"],
}
"""The demo's three configurations: plain training, the envelope's class-conditional Bσ, the paper's literal preset."""

DEMO_BASE: dict[str, Any] = {
    "data": {"name": "hc18_demo", "image_size": [64, 96], "split_seed": 0, "noise": {"level": "moderate", "seed": 0}},
    "model": {"name": "unet", "options": {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}},
    "loss": {"name": "dice_ce"},
    "optim": {"lr": 3e-3},
    "train": {"epochs": 20, "batch_size": 8, "device": "cpu", "progress": True, "val_every": 2},
}
"""The demo's run config: the packaged HC18 subset at 64x96 under moderate simulated noise, a small MONAI UNet."""

DEMO_SMOKE = ["train.epochs=2", "data.image_size=[32,48]", "data.max_train=16", "data.max_val=4", "data.max_test=4",
              "model.options.channels=[4,8,16,32]"]
"""Overrides of the hidden ``demo --smoke`` flag (the test suite's seconds-long demo)."""


class UsageError(Exception):
    """A command-line mistake, reported as one line."""


# ---------------------------------------------------------------------------------------- helpers


def _run_config(path: str, overrides: Sequence[str]):
    from seglosses.lab.config import apply_overrides, load_config

    return apply_overrides(load_config(path), list(overrides))


def _prepare_out_dir(out_dir: Path, config: Any, *, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding another run (or anything else) unless --resume or --overwrite says what to do."""
    from seglosses.lab.config import config_diff, load_config

    if not out_dir.exists() or not any(out_dir.iterdir()):
        if resume:
            raise UsageError(f"--resume: there is no run to resume in {out_dir}.")
        return
    saved = out_dir / "config.yaml"
    if not saved.is_file():
        raise UsageError(f"The output folder {out_dir} is not empty and holds no run (no config.yaml); "
                         f"choose another with --set train.out_dir=...")
    if overwrite:
        shutil.rmtree(out_dir)
        return
    if resume:
        return
    differences = config_diff(load_config(saved), config)
    state = "finished" if (out_dir / "results.json").is_file() else "unfinished"
    if differences:
        shown = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(differences.items())[:4])
        more = f" and {len(differences) - 4} more" if len(differences) > 4 else ""
        what = f"a different {state} run ({shown}{more})"
    else:
        what = f"this run, {state}"
    raise UsageError(f"The output folder {out_dir} holds {what}: add --resume to continue it, --overwrite to "
                     f"replace it, or choose another folder with --set train.out_dir=...")


def _print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for line in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip())


# ---------------------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from seglosses.lab.report import write_report
    from seglosses.lab.train import train

    config = _run_config(args.config, args.set)
    out_dir = Path(config.train.out_dir)
    _prepare_out_dir(out_dir, config, resume=args.resume, overwrite=args.overwrite)
    result = train(config, resume=args.resume)
    if result.interrupted:
        print(f"stopped; continue with: seglosses train --config {args.config} --resume "
              + " ".join(f"--set {override}" for override in args.set), file=sys.stderr)
        return 130
    report = write_report(out_dir)
    print(f"results: {out_dir / 'results.json'}")
    print(f"report:  {report}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    import math

    from seglosses.lab.data import build_splits
    from seglosses.lab.train import TEST_METRICS, evaluate, load_run

    run_dir = Path(args.run)
    if not (run_dir / "last.pt").is_file():
        raise UsageError(f"{run_dir} is not a run folder with a checkpoint (no last.pt).")
    run = load_run(run_dir, which=args.checkpoint)
    splits = build_splits(run.config.data)
    dataset = getattr(splits, args.split)
    scores, _ = evaluate(run.model, dataset, num_classes=splits.num_classes, eval_unit=splits.eval_unit,
                         metrics=TEST_METRICS, nsd_tolerance=run.config.train.nsd_tolerance)
    class_names = list(splits.class_names)[1:]  # the metrics leave out the background
    results: dict[str, Any] = {"run": str(run_dir), "split": args.split, "checkpoint": args.checkpoint,
                               "epoch": run.epoch, "units": len(dataset)}
    for name in TEST_METRICS:
        value = float(scores[name])
        results[name] = None if math.isnan(value) else value
        results.setdefault("per_class", {})[name] = {
            cls: (None if math.isnan(float(v)) else float(v)) for cls, v in zip(class_names, scores[f"{name}/class"],
                                                                                   strict=True)}
    out = Path(args.out) if args.out else run_dir / f"evaluate_{args.split}_{args.checkpoint}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{run_dir}, {args.checkpoint} model (epoch {run.epoch}) on the {args.split} split ({len(dataset)} units):")
    for name in TEST_METRICS:
        print(f"  {name:>9}: {'n/a' if results[name] is None else f'{results[name]:.4f}'}")
    print(f"written: {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from seglosses.lab.compare import load_grid, run_grid, summarise_grid

    spec = load_grid(args.config, args.set)
    if args.out:
        spec.out_dir = Path(args.out)
    cells = run_grid(spec, _train_and_report, log=print) if not args.summarise_only else None
    summary = summarise_grid(spec, cells)
    print(summary["table"])
    if summary["report"] is not None:
        print(f"report: {summary['report']}")
    return 0


def _train_and_report(config: Any, resume: bool = False) -> Any:
    from seglosses.lab.report import write_report
    from seglosses.lab.train import train

    result = train(config, resume=resume)
    if result.interrupted:  # Ctrl-C or SIGTERM: stop the whole grid; running it again resumes
        raise KeyboardInterrupt
    write_report(config.train.out_dir)
    return result


def cmd_report(args: argparse.Namespace) -> int:
    from seglosses.lab.report import write_report

    run = Path(args.run)
    if not (run / "log.csv").is_file():
        raise UsageError(f"{run} is not a run folder (no log.csv).")
    print(f"report: {write_report(run, images=not args.no_images)}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from seglosses.lab.audit import audit_run

    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise UsageError(f"{run} is not a run folder (no config.yaml).")
    result = audit_run(run, num_images=args.images, out_dir=args.out)
    if result.hit_rates is not None:
        rates = result.hit_rates
        print(f"excluded pixels: {rates.excluded}, noise-changed pixels: {rates.changed}, hits: {rates.hits}")
        print(f"precision {rates.precision:.3f} (chance {rates.chance_precision:.3f}), recall {rates.recall:.3f}")
    print(f"hardest training images: {', '.join(str(row['case_id']) for row in result.hardest)}")
    print(f"sheet: {result.sheet}")
    print(f"table: {result.table}")
    return 0


def cmd_losses(args: argparse.Namespace) -> int:
    import seglosses

    names = seglosses.list_losses(args.pattern)
    if not names:
        raise UsageError(f"no registered loss matches {args.pattern!r}; `seglosses losses` lists them all.")
    rows = []
    for name in names:
        cls = seglosses.loss_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        rows.append([name, cls.__name__, "px" if getattr(cls, "has_per_pixel", False) else "",
                     " ".join(getattr(cls, "modes", ())), summary[:80]])
    _print_table(["name", "module", "px", "modes", "what it is"], rows)
    print(f"\n{len(names)} losses; px: has a per-pixel form (usable inside the envelope). "
          f"Envelope presets: {', '.join(seglosses.ENVELOPE_PRESETS)}.")
    return 0


def demo_grid(out_dir: str | Path, smoke: bool = False, overrides: Sequence[str] = ()):
    """The demo's grid: :data:`DEMO_CONFIGURATIONS` on :data:`DEMO_BASE`, one noise level, one seed."""
    from seglosses.lab.compare import GridSpec
    from seglosses.lab.config import config_from_dict

    return GridSpec(base=config_from_dict(DEMO_BASE), out_dir=Path(out_dir), configurations=dict(DEMO_CONFIGURATIONS),
                    noise=[DEMO_BASE["data"]["noise"]["level"]], seeds=[0], baseline="erm_dice_ce",
                    overrides=[*(DEMO_SMOKE if smoke else []), *overrides])


def _append_audits(report: Path, audits: Sequence[tuple[Any, Any]]) -> None:
    """Add each envelope run's annotation audit (hit rates and sheet) to the demo's report."""
    lines = ["## Annotation audit", "",
             "Which annotated training pixels each envelope run excluded at the end of training, against the pixels "
             "the simulated noise changed (`seglosses audit RUN`).", ""]
    for cell, result in audits:
        rates = result.hit_rates
        sheet = os.path.relpath(result.sheet, report.parent)
        if rates is not None:
            lines.append(f"- `{cell.configuration}`: precision {rates.precision:.3f} (chance "
                         f"{rates.chance_precision:.3f}), recall {rates.recall:.3f} over {rates.excluded} excluded "
                         f"pixels: [sheet]({sheet})")
        else:
            lines.append(f"- `{cell.configuration}`: [sheet]({sheet})")
    with open(report, "a") as handle:
        handle.write("\n" + "\n".join(lines) + "\n")


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from seglosses.lab.audit import audit_run
    from seglosses.lab.compare import grid_cells, run_grid, summarise_grid

    started = time.perf_counter()
    if args.threads < 1:
        raise ValueError(f"Expected `--threads` to be a positive int, but got {args.threads}.")
    torch.set_num_threads(args.threads)
    spec = demo_grid(args.out, smoke=args.smoke, overrides=args.set)
    out = spec.out_dir
    print(f"seglosses demo: {len(spec.configurations)} models on the packaged HC18 subset (CC BY 4.0) under "
          f"'{spec.noise[0]}' simulated annotation noise, on {torch.get_num_threads()} CPU threads; writing to {out}")
    cells = run_grid(spec, _train_and_report, log=print)
    audits = [(cell, audit_run(cell.run_dir)) for cell in grid_cells(spec) if cell.config.envelope is not None]
    summary = summarise_grid(spec, cells)
    _append_audits(summary["report"], audits)
    print()
    rows = [[row["config"], f"{row['dice_mean']:.3f}", f"{row['hd95_mean']:.2f}", f"{row['time_mean']:.0f}",
             "" if row["config"] == spec.baseline else f"{row['dice_difference']:+.3f} (p {row['p_value']:.2g})"]
            for row in summary["summary"]]
    _print_table(["configuration", "test Dice", f"HD95 ({summary['unit']})", "train time (s)", "vs ERM (Wilcoxon)"],
                 rows)
    described = "; ".join(f"{name}: {' '.join(overrides)}" for name, overrides in spec.configurations.items())
    print(f"\nconfigurations (base loss {spec.base.loss.name}): {described}")
    print(f"report: {summary['report']}  (one report per run beside it, and an annotation audit for the "
          f"envelope runs)")
    print(f"total time: {time.perf_counter() - started:.0f} s")
    return 0


# ---------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2, like every other usage error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``seglosses`` argument parser with one sub-command per job."""
    parser = _Parser(prog="seglosses", description="Segmentation losses, the Top-k / Bottom-all-but-sigma "
                     "envelope and a runner: train, compare, report and audit on real data.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def override_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set train.epochs=5 (repeatable)")

    train = commands.add_parser("train", help="train one model from a config file",
                                description="Train one model from a YAML or TOML run config; writes the run "
                                "folder (train.out_dir) with its report.")
    train.add_argument("--config", required=True, metavar="FILE", help="the run config (.yaml, .yml or .toml)")
    override_option(train)
    existing = train.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue the run in train.out_dir from last.pt")
    existing.add_argument("--overwrite", action="store_true", help="delete the run in train.out_dir and start again")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a run's checkpoint on a split",
                                   description="Evaluate a checkpoint of a run folder on one of its splits.")
    evaluate.add_argument("run", metavar="RUN", help="a run folder")
    evaluate.add_argument("--split", choices=("train", "val", "test"), default="test")
    evaluate.add_argument("--checkpoint", choices=("selected", "best", "last"), default="selected",
                          help="the model the run selected for testing (default), the best validation one, or the last")
    evaluate.add_argument("--out", metavar="FILE", help="where to write the metrics JSON")
    evaluate.set_defaults(handler=cmd_evaluate)

    compare = commands.add_parser("compare", help="run a grid of configurations x noise x seeds and compare",
                                  description="Run (or resume) a grid from a grid file and write one table of "
                                  "mean ± std per configuration with a Wilcoxon signed-rank test against the "
                                  "baseline, per-image results and a report. See docs/runner.md for the format.")
    compare.add_argument("--config", required=True, metavar="FILE", help="the grid file (.yaml or .toml)")
    override_option(compare)
    compare.add_argument("--out", metavar="DIR", help="the grid's folder (default: the file's out_dir)")
    compare.add_argument("--summarise-only", action="store_true", help="train nothing; summarise the finished runs")
    compare.set_defaults(handler=cmd_compare)

    report = commands.add_parser("report", help="(re)write a run folder's report.md and plots",
                                 description="Write report.md and plots/*.png into a run folder.")
    report.add_argument("run", metavar="RUN", help="a run folder")
    report.add_argument("--no-images", action="store_true", help="skip the overlays (no model or data needed)")
    report.set_defaults(handler=cmd_report)

    audit = commands.add_parser("audit", help="the envelope's hardest images and excluded pixels of a run",
                                description="Annotation audit of a run trained with the envelope: the training "
                                "images it ranked hardest and the annotated pixels it excluded, as an overlay "
                                "sheet; with simulated noise, the precision and recall of the exclusions.")
    audit.add_argument("run", metavar="RUN", help="a run folder trained with the envelope")
    audit.add_argument("--images", type=int, default=8, help="how many of the hardest images to draw (default 8)")
    audit.add_argument("--out", metavar="DIR", help="where to write (default RUN/audit)")
    audit.set_defaults(handler=cmd_audit)

    losses = commands.add_parser("losses", help="list the registered losses",
                                 description="The loss registry as a table (names usable as loss.name).")
    losses.add_argument("pattern", nargs="?", help="a shell-style filter, e.g. 'dice*'")
    losses.set_defaults(handler=cmd_losses)

    demo = commands.add_parser("demo", help="train plain, class-conditional Bσ and paper_best models on HC18",
                               description="The main job: on the packaged HC18 subset under moderate simulated "
                               "annotation noise, train plain CE+Dice, the envelope's class-conditional Bσ and "
                               "the paper's paper_best on the same split and seed (a few minutes on 2 CPU cores); "
                               "print the table and write the reports.")
    demo.add_argument("--out", default="seglosses-demo", metavar="DIR", help="output folder (default ./seglosses-demo)")
    override_option(demo)
    # One thread by default: torch's threads spin-wait on each other, and on a 2-core machine with any
    # other load a 2-thread demo ran 40x slower per epoch (598 s against 15 s for the same model).
    demo.add_argument("--threads", type=int, default=1, metavar="N",
                      help="torch CPU threads (default 1: robust on a busy machine; the demo is small)")
    demo.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``seglosses`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as error:
        if os.environ.get("SEGLOSSES_DEBUG"):
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"seglosses {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = " (finished runs are kept: the same command resumes)" if args.command in ("compare", "demo") else ""
        print(f"seglosses {args.command}: interrupted{again}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
