"""Overhead of the Top-k / Bottom-all-but-sigma envelope over its base loss, and ranking speed.

1. Forward + backward of the envelope against its base loss alone, on identical inputs in one
   process, interleaved, at (8, 4, 256, 256) float32 after warm-up (a filled ledger of N = 1000).
   Target (issue 4): at most +10% over the base loss.
2. One image-level step (record the batch, rank against the ledger, weights, normaliser) at
   N = 10^6 images, batches of 8 and 64.

Writes benchmarks/results/envelope_<device>.json and .md. Usage:
    python benchmarks/envelope.py [--repeats 21] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from speed import cpu_model, git_commit, load_average, synchronize

import seglosses
from seglosses import CrossEntropyLoss, DiceLoss, TopKBottomSigma

BASES = {
    "ce_dice_pixel": lambda: seglosses.create_loss("ce_dice_pixel"),
    "cross_entropy": CrossEntropyLoss,
    "0.3*cross_entropy + 0.7*dice": lambda: 0.3 * CrossEntropyLoss() + 0.7 * DiceLoss(),
}
PRESETS = ("erm", "bsigma_class", "paper_best", "atk_sm_tk")
LEDGER_SIZE = 1000


def timed(step, device: torch.device, *args, **kwargs) -> float:
    synchronize(device)
    start = time.perf_counter()
    step(*args, **kwargs)
    synchronize(device)
    return time.perf_counter() - start


def base_step(base, logits: torch.Tensor, labels: torch.Tensor) -> None:
    base(logits.clone().requires_grad_(True), labels).backward()


def pixel_mean_step(base, logits: torch.Tensor, labels: torch.Tensor) -> None:
    base.per_pixel(logits.clone().requires_grad_(True), labels).mean().backward()


def envelope_step(criterion: TopKBottomSigma, logits: torch.Tensor, labels: torch.Tensor, step: int) -> None:
    indices = ((torch.arange(8) + 8 * step) % LEDGER_SIZE).to(logits.device)
    criterion(logits.clone().requires_grad_(True), labels, indices=indices, epoch=5).backward()


def overhead_rows(device: torch.device, repeats: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 4, 256, 256, generator=generator).to(device)
    labels = torch.randint(0, 4, (8, 256, 256), generator=generator).to(device)
    rows = []
    for base_name, make_base in BASES.items():
        base = make_base()
        for preset in PRESETS:
            criterion = TopKBottomSigma.from_preset(preset, base, LEDGER_SIZE, total_epochs=10).to(device)
            # A filled ledger: past the warm-up, every step ranks and weighs.
            criterion.ledger.copy_(torch.rand(LEDGER_SIZE, dtype=torch.float64, generator=generator))
            for step in range(2):
                base_step(base, logits, labels)
                envelope_step(criterion, logits, labels, step)
            base_times, pixel_times, envelope_times = [], [], []
            for step in range(repeats):
                base_times.append(timed(base_step, device, base, logits, labels))
                pixel_times.append(timed(pixel_mean_step, device, base, logits, labels))
                envelope_times.append(timed(envelope_step, device, criterion, logits, labels, step + 2))
            base_ms, pixel_ms, envelope_ms = (statistics.median(t) * 1e3 for t in (base_times, pixel_times,
                                                                                   envelope_times))
            rows.append({"base": base_name, "preset": preset, "base_ms": base_ms, "pixel_mean_ms": pixel_ms,
                         "envelope_ms": envelope_ms, "overhead_percent": 100 * (envelope_ms / base_ms - 1),
                         "overhead_over_pixel_mean_percent": 100 * (envelope_ms / pixel_ms - 1)})
            print(f"{base_name:30s} {preset:12s} base {base_ms:7.2f} ms per-pixel mean {pixel_ms:7.2f} ms "
                  f"envelope {envelope_ms:7.2f} ms overhead {rows[-1]['overhead_percent']:+.1f}% "
                  f"({rows[-1]['overhead_over_pixel_mean_percent']:+.1f}% over the per-pixel mean)", flush=True)
    return rows


def ranking_rows(device: torch.device, repeats: int) -> list[dict]:
    num_images = 10**6
    rows = []
    for batch in (8, 64):
        criterion = TopKBottomSigma("cross_entropy", num_images, image_strategy="atk", smoothing="sm").to(device)
        generator = torch.Generator().manual_seed(1)
        criterion.ledger.copy_(torch.rand(num_images, dtype=torch.float64, generator=generator))
        times = []
        for _ in range(repeats + 3):
            indices = torch.randperm(num_images, generator=generator)[:batch].to(device)
            losses = torch.rand(batch, generator=generator).to(device)
            times.append(timed(criterion.aggregate, device, losses, indices, epoch=3))
        steady = statistics.median(times[3:]) * 1e3
        rows.append({"num_images": num_images, "batch": batch, "first_step_ms": times[0] * 1e3, "step_ms": steady})
        print(f"N=1e6 batch {batch:3d}: first step {times[0] * 1e3:.1f} ms (one-off sort), then {steady:.2f} ms",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = load_average()
    overhead = overhead_rows(device, args.repeats)
    ranking = ranking_rows(device, 20)
    described = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "shape": [8, 4, 256, 256],
        "ledger_size": LEDGER_SIZE,
        "repeats": args.repeats,
        "statistic": "median of interleaved forward+backward timings",
        "python": platform.python_version(),
        "versions": {"seglosses": seglosses.__version__, "torch": torch.__version__},
        "seglosses_commit": git_commit(),
        "load_average_before_after": [load_before, load_average()],
        "overhead": overhead,
        "ranking": ranking,
    }
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"envelope_{device.type}.json").write_text(json.dumps(described, indent=2) + "\n")
    lines = [
        f"# Envelope overhead, {device.type} ({described['device_name']})",
        "",
        f"- {described['date']}; `{described['command']}`; seglosses commit {described['seglosses_commit']}",
        f"- torch {torch.__version__}, {described['threads']} threads, float32 (8, 4, 256, 256), ledger of "
        f"{LEDGER_SIZE} filled (past warm-up), {args.repeats} interleaved repeats; load average before/after "
        f"{described['load_average_before_after']}",
        "- Target: the envelope adds at most 10% to its base loss's forward + backward. \"base\" is the base"
        " loss's own forward (which may take a fused per-image path); \"per-pixel mean\" is"
        " `base.per_pixel(...).mean()`, the form the envelope must consume: the difference between the two"
        " is the cost of the per-pixel decomposition, the rest is the envelope's own.",
        "",
        "| base loss | preset | base ms | per-pixel mean ms | envelope ms | overhead over base |"
        " over per-pixel mean |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(f"| {r['base']} | {r['preset']} | {r['base_ms']:.2f} | {r['pixel_mean_ms']:.2f} | {r['envelope_ms']:.2f} "
          f"| {r['overhead_percent']:+.1f}% | {r['overhead_over_pixel_mean_percent']:+.1f}% |" for r in overhead),
        "",
        "Image-level step (record, rank against the whole ledger, weights) at N = 10^6:",
        "",
        "| batch | first step ms (one-off sort) | step ms |",
        "|---:|---:|---:|",
        *(f"| {r['batch']} | {r['first_step_ms']:.1f} | {r['step_ms']:.2f} |" for r in ranking),
        "",
    ]
    (results / f"envelope_{device.type}.md").write_text("\n".join(lines))
    print(f"wrote {results / f'envelope_{device.type}.md'}")


if __name__ == "__main__":
    main()
