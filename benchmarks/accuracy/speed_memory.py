"""Speed and peak memory of every loss against its peer, and the envelope's overhead (issue 12).

For each registered loss at three shapes, (8, 4, 256, 256) multiclass, (8, 1, 256, 256) binary and
(2, 3, 96, 96, 96) multiclass 3D, in its default configuration: the forward + backward time (median
of interleaved repeats, ours and the peer back to back, as benchmarks/speed.py does) and the peak
memory of one forward + backward. The peers are MONAI's, kornia's and torch's (benchmarks/speed.py's
table, and sigmoid versions of MONAI's losses for the binary shape, where ours takes the same float
(B, 1, H, W) mask as the peer; integer labels elsewhere); SMP is not installable here
without replacing torch. The envelope rows time ``TopKBottomSigma`` around ``ce_dice_pixel`` (N = 800
images, a filled ledger, a batch of 8 distinct indices, mid-schedule) against the bare base loss.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above the inputs; on CPU, where torch
keeps no allocator statistics, the growth of the peak resident set (VmHWM, reset first) over one
forward + backward in a fresh process that already holds the inputs (one subprocess per measurement; the
first step, so one-time buffers count). A loss that needs inputs beyond (logits, labels) (decoder
features, a K-bin head) or does not take a shape is listed with the reason.

Usage:
    python benchmarks/accuracy/speed_memory.py                 # CPU, the three shapes
    python benchmarks/accuracy/speed_memory.py --device cuda
    python benchmarks/accuracy/speed_memory.py --quick         # tiny shapes (the CI smoke test)

Results: ``benchmarks/accuracy/results/speed_memory_<device>[_quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import seglosses

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: speed.py's peers and timing
import speed  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHAPES = {"multiclass 2D": (8, 4, 256, 256), "binary 2D": (8, 1, 256, 256), "multiclass 3D": (2, 3, 96, 96, 96)}
QUICK_SHAPES = {"multiclass 2D": (2, 4, 32, 32), "binary 2D": (2, 1, 32, 32), "multiclass 3D": (1, 3, 12, 12, 12)}
ENVELOPE_PRESETS = ("erm", "bsigma_class_prediction", "paper_best")
ENVELOPE_IMAGES = 800
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _monai_sigmoid(class_name: str, **options) -> Callable[[], LossFunction]:
    def build() -> LossFunction:
        import monai.losses

        return getattr(monai.losses, class_name)(sigmoid=True, **options)

    return build


def _monai_sigmoid_focal() -> LossFunction:
    from monai.losses import FocalLoss

    return FocalLoss(use_softmax=False)


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def _kornia_lovasz_hinge() -> LossFunction:
    from kornia.losses import lovasz_hinge_loss

    return lovasz_hinge_loss


# Binary peers take the (B, 1, *S) float target (MONAI's sigmoid forms, torch's BCE) or the labels (kornia).
BINARY_PEERS: dict[str, speed.Peer] = {
    "dice": speed.Peer("monai DiceLoss(sigmoid, squared_pred)", _monai_sigmoid("DiceLoss", squared_pred=True),
                       "channel_float", "equal"),
    "generalized_dice": speed.Peer("monai GeneralizedDiceLoss(sigmoid)", _monai_sigmoid("GeneralizedDiceLoss"),
                                   "channel_float", "equal up to eps placement"),
    "tversky": speed.Peer("monai TverskyLoss(sigmoid)", _monai_sigmoid("TverskyLoss", alpha=0.3, beta=0.7),
                          "channel_float", "equal"),
    "focal": speed.Peer("monai FocalLoss(sigmoid)", lambda: _monai_sigmoid_focal(), "channel_float", "alpha differs"),
    "dice_ce": speed.Peer("monai DiceCELoss(sigmoid, squared_pred)", _monai_sigmoid("DiceCELoss", squared_pred=True),
                          "channel_float", "equal"),
    "iou": speed.Peer("monai DiceLoss(sigmoid, jaccard)", _monai_sigmoid("DiceLoss", jaccard=True), "channel_float",
                      "equal up to eps placement"),
    "cross_entropy": speed.Peer("torch binary_cross_entropy_with_logits", lambda: _bce, "channel_float", "equal"),
    "lovasz": speed.Peer("kornia lovasz_hinge_loss", _kornia_lovasz_hinge, "labels", "hinge on logits"),
}


def make_inputs(shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=generator).mul_(2.0).to(device).requires_grad_(True)
    classes = max(shape[1], 2)
    labels = torch.randint(0, classes, (shape[0], *shape[2:]), generator=generator).to(device)
    return logits, {"labels": labels, "channel": labels.unsqueeze(1), "channel_float": labels.unsqueeze(1).float()}


def build(name: str, implementation: str, shape: tuple[int, ...]) -> tuple[LossFunction, str]:
    """The function to measure and the target form it takes.

    ``implementation``: "ours", "peer" or "envelope:<preset>" (``name`` is then the base loss)."""
    if implementation == "ours":  # on the binary shape the float mask the sigmoid peers take: identical inputs
        return seglosses.create_loss(name), ("channel_float" if shape[1] == 1 else "labels")
    if implementation == "peer":
        peer = (BINARY_PEERS if shape[1] == 1 else speed.PEERS)[name]
        return peer.build(), peer.target_form
    preset = implementation.split(":", 1)[1]
    criterion = seglosses.TopKBottomSigma.from_preset(preset, name, ENVELOPE_IMAGES, total_epochs=10)
    criterion.aggregate(torch.rand(ENVELOPE_IMAGES, dtype=torch.float64), torch.arange(ENVELOPE_IMAGES), epoch=1)
    indices = torch.randperm(ENVELOPE_IMAGES, generator=torch.Generator().manual_seed(1))[:shape[0]]

    def enveloped(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return criterion(logits, target, indices=indices.to(logits.device), epoch=5)

    return enveloped, "labels"


def peak_memory_cuda(function: LossFunction, logits: torch.Tensor, target: torch.Tensor) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    torch.autograd.grad(function(logits, target), logits)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _high_water_mark_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_one(name: str, implementation: str, shape: tuple[int, ...]) -> float:
    """Peak-RSS growth (MiB) of one forward + backward; run in a fresh process (the ``measure`` command).

    The peak resident set is reset to the current one first (Linux: ``5 > /proc/self/clear_refs``), so
    that a higher peak during the imports does not hide the step's."""
    logits, targets = make_inputs(shape, torch.device("cpu"))
    function, form = build(name, implementation, shape)
    Path("/proc/self/clear_refs").write_text("5")
    before = _high_water_mark_kib()
    torch.autograd.grad(function(logits, targets[form]), logits)
    return (_high_water_mark_kib() - before) / 1024


def peak_memory_cpu(name: str, implementation: str, shape: tuple[int, ...], threads: int) -> float:
    command = [sys.executable, __file__, "measure", name, implementation, ",".join(map(str, shape)),
               "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "measure failed")
    return float(done.stdout.strip().splitlines()[-1])


def benchmark(name: str, implementations: list[str], shape: tuple[int, ...], device: torch.device,
              repeats: int, warmup: int, threads: int) -> dict:
    """Times (interleaved) and peak memory of ``implementations`` of ``name`` at ``shape``."""
    logits, targets = make_inputs(shape, device)
    contenders = []
    for implementation in implementations:
        function, form = build(name, implementation, shape)
        contenders.append((function, targets[form]))
    for _ in range(warmup):
        for function, target in contenders:
            speed.time_step(function, logits, target, device)
    # A slow loss (seconds per step) gets fewer repeats: about 20 s of timing per loss and shape at most.
    slowest = max(speed.time_step(function, logits, target, device) for function, target in contenders)
    repeats = min(repeats, max(3, int(20_000 / (slowest * len(contenders)))))
    timings: list[list[float]] = [[] for _ in contenders]
    for repeat in range(repeats):
        for position in range(len(contenders)):
            index = (position + repeat) % len(contenders)
            function, target = contenders[index]
            timings[index].append(speed.time_step(function, logits, target, device))
    record = {"loss": name, "shape": list(shape), "implementations": implementations, "repeats": repeats,
              "ms": [statistics.median(times) for times in timings]}
    if len(contenders) > 1:
        record["paired_ratio"] = speed.paired_ratio(timings[1], timings[0])
    if device.type == "cuda":
        record["peak_mib"] = [peak_memory_cuda(function, logits, target) for function, target in contenders]
    else:
        record["peak_mib"] = [peak_memory_cpu(name, implementation, shape, threads)
                              for implementation in implementations]
    return record


def table(records: list[dict], peers: dict[str, str]) -> list[str]:
    lines = ["| loss | shape | ours ms | peer | peer ms | time ratio (peer/ours) | ours peak MiB | peer peak MiB "
             "| memory ratio (peer/ours) |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for record in records:
        shape = "x".join(map(str, record["shape"]))
        if "skipped" in record:
            lines.append(f"| {record['loss']} | {shape} | skipped: {record['skipped']} | | | | | | |")
            continue
        ms, peak = record["ms"], record["peak_mib"]
        if len(ms) == 1:
            lines.append(f"| {record['loss']} | {shape} | {ms[0]:.1f} | — | — | — | {peak[0]:.1f} | — | — |")
            continue
        memory_ratio = f"{peak[1] / peak[0]:.2f}" if peak[0] > 0 else "—"
        lines.append(f"| {record['loss']} | {shape} | {ms[0]:.1f} | {peers[record['loss'] + shape]} | {ms[1]:.1f} "
                     f"| {ms[1] / ms[0]:.2f} | {peak[0]:.1f} | {peak[1]:.1f} | {memory_ratio} |")
    return lines


def envelope_table(records: list[dict]) -> list[str]:
    lines = ["| envelope preset | shape | base loss ms | with envelope ms | time overhead | base peak MiB "
             "| with envelope peak MiB |", "|---|---|---:|---:|---:|---:|---:|"]
    for record in records:
        shape = "x".join(map(str, record["shape"]))
        (base_ms, ms), (base_mib, mib) = record["ms"], record["peak_mib"]
        preset = record["implementations"][1].split(":", 1)[1]
        lines.append(f"| {preset} | {shape} | {base_ms:.1f} | {ms:.1f} | {100 * (ms / base_ms - 1):+.1f}% "
                     f"| {base_mib:.1f} | {mib:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "measure"])
    parser.add_argument("measured", nargs="*", help="measure: loss implementation shape (internal)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 15, 3D 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    parser.add_argument("--losses", default="*", help="shell pattern over registered loss names")
    parser.add_argument("--peers-only", action="store_true", help="only the losses that have a peer")
    parser.add_argument("--presets", default=",".join(ENVELOPE_PRESETS), help="envelope presets, comma-separated")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "measure":
        name, implementation, shape = args.measured
        print(measure_one(name, implementation, tuple(int(size) for size in shape.split(","))))
        return 0

    load_before = speed.load_average()
    device = torch.device(args.device)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    records, envelope_records, peers = [], [], {}
    for label, shape in shapes.items():
        repeats = args.repeats or (2 if args.quick else 15 if len(shape) == 4 else 5)
        table_peers = BINARY_PEERS if shape[1] == 1 else speed.PEERS
        for name in seglosses.list_losses(args.losses):
            if args.peers_only and name not in table_peers:
                continue
            implementations = ["ours", "peer"] if name in table_peers else ["ours"]
            if name in table_peers:
                peers[name + "x".join(map(str, shape))] = table_peers[name].name
            try:
                record = benchmark(name, implementations, shape, device, repeats, args.warmup, args.threads)
            except (TypeError, ValueError, NotImplementedError, RuntimeError) as error:
                record = {"loss": name, "shape": list(shape), "skipped": f"{type(error).__name__}: {error}"[:160]}
            record["case"] = label
            records.append(record)
            print(table(records, peers)[-1], flush=True)
        if shape[1] > 1:
            for preset in filter(None, args.presets.split(",")):
                envelope_records.append(benchmark("ce_dice_pixel", ["ours", f"envelope:{preset}"], shape, device,
                                                  repeats, args.warmup, args.threads))
                print(envelope_table(envelope_records)[-1], flush=True)

    described = speed.environment(device, argparse.Namespace(
        repeats=args.repeats, repeats_3d=args.repeats, warmup=args.warmup, note=args.note, load_before=load_before))
    described["memory"] = ("CUDA: max_memory_allocated above the inputs" if device.type == "cuda" else
                           "CPU: growth of the peak resident set over one forward + backward in a fresh process")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"speed_memory_{device.type}" + ("_quick" if args.quick else "")
    (out_dir / f"{stem}.json").write_text(json.dumps(
        {"environment": described, "losses": records, "envelope": envelope_records}, indent=2) + "\n")
    versions = ", ".join(f"{name} {version}" for name, version in described["versions"].items())
    lines = [f"# Speed and peak memory of every loss, and the envelope's overhead: {device.type} "
             f"({described['device_name']})", "",
             f"- Date: {described['date']}; command: `{described['command']}`",
             f"- {versions}; seglosses commit {described['seglosses_commit']}",
             f"- float32, {described['threads']} thread(s); time: median of interleaved forward + backward "
             f"repeats (ms), ratio = peer / ours (> 1: ours faster); memory: {described['memory']}",
             "- inputs: ours takes integer labels, except on the binary shape, where it takes the (B, 1, H, W) "
             "float mask that the sigmoid peers take",
             f"- 1-minute load average before / after: {described['load_average_1min_before_after']}",
             *([f"- Note: {args.note}"] if args.note else []), "", "## Losses", "", *table(records, peers), "",
             f"## The envelope around ce_dice_pixel (N = {ENVELOPE_IMAGES}, filled ledger, epoch 5 of 10)", "",
             *envelope_table(envelope_records), ""]
    (out_dir / f"{stem}.md").write_text("\n".join(lines))
    print(f"wrote {out_dir / stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
