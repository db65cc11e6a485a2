"""Runner overhead per epoch against a bare loop, and data-loader against model-step throughput.

1. Per-epoch cost of ``seglosses.lab.train`` against a bare PyTorch loop with the same model, loss,
   optimiser, schedule, batches and data (augmentation off in both, validation only after the
   last epoch). The runner's per-epoch cost is its marginal cost: (T(E + K) - T(E)) / K over two
   whole runs, so it includes everything an epoch does (logging, checkpoints, envelope records,
   progress) and setup and test evaluation cancel. The bare loop times its epochs directly.
   Repeats alternate the contenders. Target (issue 7): the runner adds at most 5%.
2. Images per CPU second of the data loader alone (decoded arrays cached, as after the first epoch)
   against images per CPU second of the bare model step (forward + backward + optimiser step).

Times are the process's CPU time (robust to other processes on a shared machine) and wall time.

Writes benchmarks/results/runner_<device>.json and .md. Usage:
    python benchmarks/runner.py [--device cpu] [--threads 2] [--max-train 32] [--image-size 128]
        [--batch-size 8] [--epochs 1] [--extra-epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from speed import cpu_model, git_commit, load_average, synchronize

import seglosses
from seglosses.lab.config import config_from_dict
from seglosses.lab.data import build_splits
from seglosses.lab.models import build_model
from seglosses.lab.train import build_criterion, load_checkpoint, lr_factor, save_checkpoint, train


def run_config(args: argparse.Namespace, epochs: int, out_dir: Path, envelope: bool):
    return config_from_dict({
        "data": {"name": "hc18", "image_size": [args.image_size, args.image_size], "max_train": args.max_train,
                 "max_val": args.batch_size, "max_test": args.batch_size},
        "model": {"name": "basic_unet", "options": {"features": args.features}},
        "loss": {"name": "dice_ce"},
        "envelope": {"preset": "paper_best"} if envelope else None,
        "optim": {"name": "adamw", "lr": 1e-3, "schedule": "poly"},
        "train": {"epochs": epochs, "batch_size": args.batch_size, "device": args.device, "amp": True,
                  "val_every": 0, "augment": {"enabled": False}, "progress": False, "out_dir": str(out_dir),
                  "num_workers": args.num_workers},
    })


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is robust to other processes on a shared machine."""
    return time.perf_counter(), time.process_time()


def runner_seconds(args, splits, epochs: int, envelope: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of a whole run of ``epochs`` epochs."""
    with tempfile.TemporaryDirectory() as folder:
        synchronize(torch.device(args.device))
        wall, cpu = clocks()
        train(run_config(args, epochs, Path(folder) / "run", envelope), splits=splits)
        synchronize(torch.device(args.device))
        return time.perf_counter() - wall, time.process_time() - cpu


def bare_epoch_seconds(args, splits, epochs: int, envelope: bool) -> list[tuple[float, float]]:
    """The loop a user would write: the same model, loss, optimiser, schedule and shuffled batches."""
    device = torch.device(args.device)
    config = run_config(args, epochs, Path("unused"), envelope)
    torch.manual_seed(0)
    criterion, out_channels = build_criterion(config, splits.num_classes, len(splits.train))
    criterion = criterion.to(device)
    model = build_model(config.model, spatial_dims=2, in_channels=splits.in_channels,
                        out_channels=out_channels).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.num_workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.num_workers > 0)
    total = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps=total, warmup_steps=0, schedule="poly"))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    times = []
    for epoch in range(1, epochs + 1):
        synchronize(device)
        wall, cpu = clocks()
        model.train()
        for batch in loader:
            images, masks = batch["image"].to(device), batch["mask"].to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                logits = model(images)
                if envelope:
                    loss = criterion(logits, masks, indices=batch["index"].to(device), epoch=epoch)
                else:
                    loss = criterion(logits, masks)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        synchronize(device)
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def loader_images_per_second(args, splits) -> float:
    loader = torch.utils.data.DataLoader(splits.train, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.num_workers)
    images, start = 0, time.process_time()
    for _ in range(3):
        for batch in loader:
            images += batch["image"].shape[0]
    return images / (time.process_time() - start)


def checkpoint_write_seconds(args, splits) -> float:
    """Median time to write a run's last.pt atomically (temporary file, fsync, rename)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        train(run_config(args, 1, out, envelope=True), splits=splits)
        state, times = load_checkpoint(out / "last.pt"), []
        for _ in range(5):
            start = time.perf_counter()
            save_checkpoint(state, out / "last.pt")
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-train", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--features", type=int, nargs=6, default=[16, 16, 32, 64, 128, 16])
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the shorter runner run")
    parser.add_argument("--extra-epochs", type=int, default=3, help="K: the longer run has epochs + K")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Both contenders flush denormals (the runner does so by default on the CPU, train.flush_denormal):
    # otherwise near-zero envelope weights make the backward passes of selective epochs several times slower.
    torch.set_flush_denormal(True)
    load_before = load_average()
    splits = build_splits(config_from_dict({"data": {
        "name": "hc18", "image_size": [args.image_size, args.image_size], "max_train": args.max_train,
        "max_val": args.batch_size, "max_test": args.batch_size}}).data)
    loader_images_per_second(args, splits)  # decode and cache every image once, as the first epoch does

    rows = []
    for envelope in (False, True):
        bare, runner = [], []
        train_images = len(splits.train)
        runner_seconds(args, splits, 1, envelope)  # warm-up (first-call costs of MONAI, the allocator)
        for _ in range(args.repeats):
            bare.extend(bare_epoch_seconds(args, splits, args.extra_epochs, envelope))
            short = runner_seconds(args, splits, args.epochs, envelope)
            long = runner_seconds(args, splits, args.epochs + args.extra_epochs, envelope)
            runner.append(tuple((b - a) / args.extra_epochs for a, b in zip(short, long, strict=True)))
        row = {"loss": "dice_ce" + (" in the paper_best envelope" if envelope else "")}
        for position, clock in enumerate(("wall", "cpu")):
            bare_s = statistics.median(sample[position] for sample in bare)
            runner_s = statistics.median(sample[position] for sample in runner)
            row.update({f"bare_epoch_{clock}_s": bare_s, f"runner_epoch_{clock}_s": runner_s,
                        f"overhead_{clock}_percent": 100 * (runner_s / bare_s - 1)})
        row.update({"bare_images_per_s": train_images / row["bare_epoch_cpu_s"],
                    "runner_images_per_s": train_images / row["runner_epoch_cpu_s"],
                    "bare_epoch_samples_wall_cpu": bare, "runner_epoch_samples_wall_cpu": runner})
        rows.append(row)
        print(f"{row['loss']:40s} CPU time: bare {row['bare_epoch_cpu_s']:.3f} s/epoch, runner "
              f"{row['runner_epoch_cpu_s']:.3f} s/epoch, overhead {row['overhead_cpu_percent']:+.1f}%; wall time: "
              f"bare {row['bare_epoch_wall_s']:.3f}, runner {row['runner_epoch_wall_s']:.3f}, overhead "
              f"{row['overhead_wall_percent']:+.1f}%", flush=True)
    checkpoint_s = checkpoint_write_seconds(args, splits)
    print(f"last.pt write (model, AdamW, envelope state): {checkpoint_s:.3f} s", flush=True)
    loader_rate = statistics.median(loader_images_per_second(args, splits) for _ in range(3))
    step_rate = rows[0]["bare_images_per_s"]
    print(f"loader {loader_rate:.0f} images/s, model step {step_rate:.1f} images/s", flush=True)

    device = torch.device(args.device)
    described = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(),
        "dtype": "float16 autocast" if device.type == "cuda" else "float32",
        "data": f"HC18, {len(splits.train)} training images resized to {args.image_size}x{args.image_size}",
        "model": f"MONAI BasicUNet features {args.features}",
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "runner_epochs": [args.epochs, args.epochs + args.extra_epochs],
        "repeats": args.repeats,
        "statistic": "median; runner per epoch = (T(E + K) - T(E)) / K of whole runs, bare loop timed per epoch; "
                     "CPU time of the process (robust on a shared machine) and wall time",
        "python": platform.python_version(),
        "versions": {"seglosses": seglosses.__version__, "torch": torch.__version__},
        "seglosses_commit": git_commit(),
        "load_average_before_after": [load_before, load_average()],
        "overhead": rows,
        "checkpoint_write_s": checkpoint_s,
        "loader_images_per_s": loader_rate,
        "model_step_images_per_s": step_rate,
    }
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"runner_{device.type}.json").write_text(json.dumps(described, indent=2) + "\n")
    lines = [
        f"# Runner overhead, {device.type} ({described['device_name']})",
        "",
        f"- {described['date']}; `{described['command']}`; seglosses commit {described['seglosses_commit']}",
        f"- torch {torch.__version__}, {described['threads']} threads, {described['dtype']}; {described['data']}; "
        f"{described['model']}; batch {args.batch_size}; {args.num_workers} loader workers; load average "
        f"before/after {described['load_average_before_after']}",
        "- Target: `seglosses.lab.train` adds at most 5% per epoch over a bare loop with the same model, loss,"
        " optimiser, schedule and data. Runner per epoch = (T(E + K) - T(E)) / K of whole runs"
        f" (E = {args.epochs}, K = {args.extra_epochs}): everything an epoch does (log, envelope records);"
        " augmentation off in both, validation only after the last epoch (it cancels). `last.pt` is written"
        " after the last epoch and otherwise at most every `train.checkpoint_every_s` (60 s), so in these"
        " short epochs it cancels too; its cost is measured on its own below.",
        "",
        "CPU time is this process's (one thread, loader in the process): it measures the work each contender"
        " does and is robust to other processes on a shared machine; wall time includes waiting for them.",
        "",
        "| loss | bare CPU s/epoch | runner CPU s/epoch | overhead (CPU) | bare wall s/epoch | runner wall s/epoch "
        "| overhead (wall) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['loss']} | {r['bare_epoch_cpu_s']:.3f} | {r['runner_epoch_cpu_s']:.3f} | "
          f"{r['overhead_cpu_percent']:+.1f}% | {r['bare_epoch_wall_s']:.3f} | {r['runner_epoch_wall_s']:.3f} | "
          f"{r['overhead_wall_percent']:+.1f}% |" for r in rows),
        "",
        f"Writing `last.pt` (model, AdamW and envelope state, temporary file + fsync + rename): {checkpoint_s:.3f} s;"
        " with `train.checkpoint_every_s: 0` (every epoch) add this to every epoch.",
        "",
        f"Data loader alone (cached arrays, batch {args.batch_size}, {args.num_workers} workers; per CPU second): "
        f"{loader_rate:.0f} images/s; model step (forward + backward + AdamW): {step_rate:.1f} images/s, "
        f"so the loader is {loader_rate / step_rate:.0f}x faster than the model consumes.",
        "",
    ]
    (results / f"runner_{device.type}.md").write_text("\n".join(lines))
    print(f"wrote {results / f'runner_{device.type}.md'}")


if __name__ == "__main__":
    main()
