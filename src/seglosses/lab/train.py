"""Training: ``train(config) -> RunResult``, a plain loop that reads top to bottom.

One call builds the splits, the MONAI network, the loss (optionally inside the Top-k /
Bottom-all-but-sigma envelope), AdamW or SGD with a warm-up + poly/cosine schedule, then runs
the epochs: augment each batch, forward (mixed precision on CUDA), loss, backward, step;
validate every ``val_every`` epochs with :mod:`seglosses.metrics`; write ``log.csv``,
``envelope/epoch_###.npz``, ``best.pt`` and ``last.pt``; finally evaluate the selected model on
the test split into ``results.json`` and ``per_image.csv``.

Exact resume: a checkpoint holds the model, optimiser, scheduler, GradScaler, envelope state,
the RNG states of torch, numpy and Python, the epoch and the step within it, and the epoch's
partial sums. The data order is a seeded permutation per epoch and augmentation is drawn from a
generator seeded by (seed, epoch, sample index), so neither depends on any RNG state: a resumed
run on the CPU gives bit-identical parameters to an uninterrupted one. Ctrl-C or SIGTERM finishes
the current step, writes ``last.pt`` and returns (``RunResult.interrupted``).

DDP: launched with ``torchrun``, every process calls ``train(config)``; ``train.batch_size`` is the
global batch, split evenly. Rank ``r`` takes positions ``r, r + W, ...`` of the epoch's permutation
(``DistributedSampler``), so the processes together see the same global batches as one process. The envelope keeps a
global ledger; validation and test metrics are gathered across processes; rank 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

from seglosses.envelope import TopKBottomSigma
from seglosses.lab.config import (
    RESUMABLE_CHANGES,
    AugmentConfig,
    RunConfig,
    check_config,
    config_diff,
    config_from_dict,
    config_to_dict,
    envelope_config,
    save_config,
)
from seglosses.lab.models import build_model, deep_supervision_weights
from seglosses.metrics import SegmentationMetrics, as_labels
from seglosses.registry import create_loss

__all__ = [
    "LoadedRun",
    "RunResult",
    "augment_batch",
    "build_criterion",
    "evaluate",
    "load_checkpoint",
    "load_run",
    "lr_factor",
    "predict",
    "save_checkpoint",
    "train",
]

LOG_COLUMNS = ("epoch", "lr", "train_loss", "train_loss_unscaled", "val_dice", "val_hd95", "time_s", "images_per_s")
TEST_METRICS = ("dice", "iou", "precision", "recall", "hd95", "assd", "nsd")
RUN_FILES = ("last.pt", "best.pt", "log.csv", "results.json", "per_image.csv")
SAMPLE_KEYS = ("image", "mask", "clean_mask", "index", "case_id", "slice_index")


@dataclass
class RunResult:
    """What :func:`train` returns.

    Attributes:
        out_dir: the run folder.
        config: the resolved config.
        epochs_completed: epochs fully trained.
        history: the rows of ``log.csv`` (dicts).
        best_epoch, best_val_dice: the epoch with the best validation Dice (None if never validated).
        selected: "best" or "final": the weights evaluated on the test split.
        test: the contents of ``results.json`` (None when interrupted).
        interrupted: True when Ctrl-C or SIGTERM stopped the run (``last.pt`` resumes it).
    """

    out_dir: Path
    config: RunConfig
    epochs_completed: int
    history: list[dict[str, Any]]
    best_epoch: int | None
    best_val_dice: float | None
    selected: str
    test: dict[str, Any] | None
    interrupted: bool = False


# --------------------------------------------------------------------------- schedule and augmentation


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str, poly_power: float = 0.9) -> float:
    """The learning-rate multiplier at 0-based ``step``: linear warm-up, then poly, cosine or constant.

    Example:
        >>> [lr_factor(s, total_steps=10, warmup_steps=2, schedule="poly", poly_power=1.0) for s in (0, 1, 2, 6)]
        [0.5, 1.0, 1.0, 0.5]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "poly":
        return (1.0 - progress) ** poly_power
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def _augment_draws(seed: int, epoch: int, indices: Sequence[int]) -> np.ndarray:
    """(B, 8) uniform draws in [0, 1) per image, from a generator seeded by (seed, epoch, index)."""
    return np.stack([np.random.default_rng([seed, epoch, int(index)]).random(8) for index in indices])


def _rotate(tensor: Tensor, angles: Tensor, mode: str) -> Tensor:
    """Rotate (B, C, *S) by ``angles`` (radians, per image) in the plane of the last two axes."""
    cos, sin, zeros, ones = angles.cos(), angles.sin(), torch.zeros_like(angles), torch.ones_like(angles)
    if tensor.ndim == 4:
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    else:  # (x, y, z) = (W, H, D): rotate x and y, keep z
        theta = torch.stack([torch.stack([cos, -sin, zeros, zeros], 1), torch.stack([sin, cos, zeros, zeros], 1),
                             torch.stack([zeros, zeros, ones, zeros], 1)], 1)
    grid = F.affine_grid(theta.to(tensor.dtype), list(tensor.shape), align_corners=False)
    return F.grid_sample(tensor, grid, mode=mode, padding_mode="zeros", align_corners=False)


def augment_batch(
    images: Tensor, masks: Sequence[Tensor], draws: np.ndarray, config: AugmentConfig
) -> tuple[Tensor, list[Tensor]]:
    """Flip, rotate and scale the intensities of a batch; every mask gets the same geometry.

    Args:
        images: (B, C, *S) float images.
        masks: integer label maps (B, *S) (the training mask and the clean mask).
        draws: (B, 8) uniforms in [0, 1) per image (:func:`_augment_draws`): 3 flips, rot90,
            rotation angle, intensity scale and shift.
        config: which operations, and their ranges.

    Returns:
        The augmented images and masks (same shapes and dtypes).
    """
    if not config.enabled:
        return images, list(masks)
    u = torch.as_tensor(draws, dtype=torch.float64)
    batch, spatial = images.shape[0], images.ndim - 2
    masks = [mask.unsqueeze(1) for mask in masks]
    if config.flip:
        for axis in range(spatial):
            chosen = (u[:, axis] < 0.5).to(images.device).view(-1, *([1] * (images.ndim - 1)))
            dim = 2 + axis
            images = torch.where(chosen, images.flip(dim), images)
            masks = [torch.where(chosen, mask.flip(dim), mask) for mask in masks]
    if config.rot90 and images.shape[-1] == images.shape[-2]:
        turns = (u[:, 3] * 4).floor().long().tolist()
        if any(turns):
            images = torch.stack([images[b].rot90(turns[b], (-2, -1)) for b in range(batch)])
            masks = [torch.stack([mask[b].rot90(turns[b], (-2, -1)) for b in range(batch)]) for mask in masks]
    if config.rotation_degrees > 0:
        angles = ((u[:, 4] * 2 - 1) * math.radians(config.rotation_degrees)).to(images.device, torch.float32)
        images = _rotate(images, angles, "bilinear")
        masks = [_rotate(mask.float(), angles, "nearest").round().to(mask.dtype) for mask in masks]
    if config.intensity_scale > 0 or config.intensity_shift > 0:
        shape = (batch, *([1] * (images.ndim - 1)))
        scale = (1 + (u[:, 5] * 2 - 1) * config.intensity_scale).to(images.device, images.dtype).view(shape)
        shift = ((u[:, 6] * 2 - 1) * config.intensity_shift).to(images.device, images.dtype).view(shape)
        std = images.flatten(1).std(dim=1).view(shape)
        images = images * scale + shift * std
    return images, [mask.squeeze(1) for mask in masks]


# --------------------------------------------------------------------------- loss


def _binary_or_multiclass(loss: nn.Module, num_classes: int, name: str) -> str:
    """The mode a run uses for ``num_classes``-class label maps, or a clear error."""
    modes = tuple(getattr(loss, "modes", ("multiclass", "binary")))
    mode = getattr(loss, "mode", None)
    if mode == "multilabel":
        raise ValueError(f"Expected `loss.options.mode` to be 'multiclass' or 'binary' for label maps with "
                         f"{num_classes} classes, but got 'multilabel' (the datasets give one label per pixel).")
    if num_classes > 2:
        if mode == "binary" or "multiclass" not in modes:
            raise ValueError(f"Expected `loss.name` to be a loss that serves {num_classes}-class label maps "
                             f"(multiclass mode), but got {name!r}, which supports {list(modes)}"
                             f"{' and is set to binary' if mode == 'binary' else ''}.")
        return "multiclass"
    if mode == "binary" or (mode is None and "multiclass" not in modes and "binary" in modes):
        return "binary"
    if "multiclass" not in modes:
        raise ValueError(f"Expected `loss.name` to be a loss that serves 2-class label maps (multiclass or "
                         f"binary mode), but got {name!r}, which supports {list(modes)}.")
    return "multiclass"


def build_criterion(config: RunConfig, num_classes: int, num_train: int) -> tuple[nn.Module, int]:
    """The training criterion (the loss, or the envelope around it) and the model's output channels.

    Two-class data train with a 2-channel softmax unless the loss is binary-only or has
    ``mode: binary`` (then 1 sigmoid channel). A loss that cannot serve the data is refused.

    Example:
        >>> from seglosses.lab.config import RunConfig
        >>> criterion, channels = build_criterion(RunConfig(), num_classes=4, num_train=10)
        >>> type(criterion).__name__, channels
        ('DiceCELoss', 4)
    """
    name, options = config.loss.name, dict(config.loss.options)
    try:
        loss = create_loss(name, **options)
    except TypeError as error:
        raise TypeError(f"Expected `loss.options` to be options of {name!r}, but got {sorted(options)}: "
                        f"{error}") from error
    mode = _binary_or_multiclass(loss, num_classes, name)
    out_channels = 1 if mode == "binary" else num_classes
    if config.envelope is None:
        return loss, out_channels
    try:
        criterion = TopKBottomSigma(loss, num_train, config=envelope_config(config))
    except TypeError as error:
        raise TypeError(f"Expected `loss.name` to be a loss the envelope can wrap, but got {name!r}: "
                        f"{error}") from error
    return criterion, out_channels


def _loss_value(criterion: nn.Module, outputs: Tensor | list[Tensor], masks: Tensor, indices: Tensor,
                epoch: int) -> Tensor:
    if isinstance(criterion, TopKBottomSigma):
        return criterion(outputs, masks, indices=indices, epoch=epoch)
    if isinstance(outputs, list):
        return sum(weight * criterion(head, masks)
                   for weight, head in zip(deep_supervision_weights(len(outputs)), outputs, strict=True))
    return criterion(outputs, masks)


def _add_diagnostics(sums: dict[str, Any], diagnostics: Any) -> None:
    """Add one step's envelope diagnostics to the epoch sums, generically: every number and 0-dim
    tensor as ``name``, the mean of every per-image tensor as ``name_mean`` (summed on the device,
    so logging costs no host sync)."""
    for item in dataclasses.fields(diagnostics):
        value = getattr(diagnostics, item.name)
        if isinstance(value, Tensor):
            key = item.name if value.ndim == 0 else f"{item.name}_mean"
            value = value.detach().double().mean() if value.numel() else torch.tensor(math.nan, dtype=torch.float64)
        elif isinstance(value, (bool, int, float)):
            key, value = item.name, float(value)
        else:
            continue
        sums[key] = sums[key] + value if key in sums else value
    sums["_steps"] = sums.get("_steps", 0) + 1


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` with ``torch.save`` atomically: a temporary file beside ``path``, then a rename.

    If writing fails (a full disk), the temporary file is removed and the previous ``path`` is
    left as it was; the ``OSError`` says so.
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no previous {path.name} existed"
        raise OSError(error.errno, f"Could not write the checkpoint {path} ({error.strerror or error}); "
                      f"{kept}. Free space and resume.") from error


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (no arbitrary code is run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Expected `checkpoint` to be an existing file, but got {str(path)!r}.")
    return torch.load(path, map_location=map_location, weights_only=True)


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
        "python": {"version": python_state[0], "state": list(python_state[1]), "gauss": python_state[2]},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- data order


class _Order(Sampler[int]):
    """Yields the indices it was last given (this process's part of the epoch, from :func:`_epoch_order`)."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.indices))

    def __len__(self) -> int:
        return len(self.indices)


def _epoch_order(dataset: Dataset, seed: int, epoch: int, rank: int, world: int, shuffle: bool = True) -> list[int]:
    """This process's indices for ``epoch``: PyTorch's DistributedSampler (a permutation seeded by
    seed + epoch, padded by wrapping, positions rank, rank + W, ...), as a list so a resumed epoch
    can skip the batches already done."""
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """PyTorch's default collation, with a clear error when the images of a batch differ in size."""
    sizes = {tuple(sample["image"].shape) for sample in samples}
    if len(sizes) > 1:
        raise ValueError(f"Expected the images of a batch to share one size (set `data.image_size`), but got "
                         f"{sorted(sizes)} for cases {[sample['case_id'] for sample in samples]}.")
    return default_collate(samples)


def _loader(dataset: Dataset, batch_size: int, sampler: Sampler | None, num_workers: int, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                      pin_memory=pin, persistent_workers=num_workers > 0, drop_last=False, collate_fn=_collate)


# --------------------------------------------------------------------------- prediction and evaluation


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    amp: bool = False,
    return_logits: bool = False,
    indices: Sequence[int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Run ``model`` (in evaluation mode) over ``dataset`` and yield each batch with its predictions.

    Args:
        model: maps (B, C_in, *S) images to (B, C, *S) logits (C = 1: sigmoid binary).
        dataset: samples as dicts (``image``, ``mask``, ``index``, ``case_id``, ...).
        batch_size, num_workers: of the DataLoader.
        device: where the model runs.
        amp: float16 autocast on CUDA.
        return_logits: also yield the float32 logits (on the CPU).
        indices: evaluate only these dataset positions (in this order).

    Returns:
        An iterator of the collated batch dicts (on the CPU) plus ``pred``: (B, *S) int64 labels
        (and ``logits`` (B, C, *S) with ``return_logits``).
    """
    device = torch.device(device)
    model.eval()
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    loader = _loader(subset, batch_size, None, num_workers, device.type == "cuda")
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
            logits = model(images)
        logits = logits.float()
        batch["pred"] = as_labels(logits).cpu()
        if return_logits:
            batch["logits"] = logits.cpu()
        yield batch


def _as_list(value: Any) -> list:
    return value.tolist() if isinstance(value, Tensor) else list(value)


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    num_classes: int,
    eval_unit: str = "image",
    metrics: Sequence[str] = ("dice", "hd95"),
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    amp: bool = False,
    nsd_tolerance: float | None = None,
) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """Score ``model`` on ``dataset`` with :class:`seglosses.metrics.SegmentationMetrics`.

    Under DDP every process scores its share (positions rank, rank + W, ...) and the metrics are
    gathered. Samples with a ``spacing`` entry are scored in its units (mm), others in pixels
    (volumes stacked from slices need a 3-value spacing, slice distance first).

    Returns:
        (the metrics' ``compute()`` dict, one dict per unit with ``case_id`` and ``index`` in the
        order of the ``*/unit`` rows: the sample index for images, the volume number for volumes).
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    scores = SegmentationMetrics(num_classes, metrics=tuple(metrics), unit=eval_unit,
                                 nsd_tolerance=nsd_tolerance if "nsd" in metrics else None)
    shard = list(range(rank, len(dataset), world))
    seen: list[dict[str, Any]] = []
    for batch in predict(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers, amp=amp,
                         indices=shard):
        spacing = batch.get("spacing")
        if eval_unit == "volume" and spacing is not None and spacing.shape[-1] != 3:
            spacing = None  # in-plane only: the slice distance is unknown, so volumes are scored in voxels
        if eval_unit == "volume":
            scores.update(batch["pred"], batch["mask"], spacing=spacing, case_ids=list(batch["case_id"]),
                          slice_indices=_as_list(batch["slice_index"]))
        else:
            scores.update(batch["pred"], batch["mask"], spacing=spacing)
            seen.extend({"case_id": case_id, "index": int(index)}
                        for case_id, index in zip(batch["case_id"], _as_list(batch["index"]), strict=True))
    if world > 1 and eval_unit == "image":
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, seen)
    else:
        gathered = [seen]
    result = scores.compute()
    units = []
    for position, unit_id in enumerate(scores.unit_ids):
        if eval_unit == "volume":
            units.append({"case_id": str(unit_id), "index": position})
        elif isinstance(unit_id, tuple):  # (rank, position) under DDP
            units.append(gathered[unit_id[0]][unit_id[1]])
        else:
            units.append(gathered[0][unit_id])
    return result, units


def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _write_results(out_dir: Path, result: dict[str, Tensor], units: list[dict[str, Any]], class_names: Sequence[str],
                   extra: dict[str, Any]) -> dict[str, Any]:
    """results.json (means and per-class values) and per_image.csv (one row per unit and class)."""
    scored = list(class_names)[1:]  # the metrics leave out the background
    summary: dict[str, Any] = {"mean": {}, "per_class": {}, "undefined": {}}
    for name in TEST_METRICS:
        summary["mean"][name] = _number(result[name])
        summary["per_class"][name] = {cls: _number(v) for cls, v in zip(scored, result[f"{name}/class"], strict=True)}
        summary["undefined"][name] = {cls: int(v) for cls, v in zip(scored, result[f"{name}/undefined"], strict=True)}
    summary["units"] = int(result["units"])
    summary.update(extra)
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    with open(out_dir / "per_image.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "index", "class", *TEST_METRICS])
        for row, unit in enumerate(units):
            for column, cls in enumerate(scored):
                values = [_number(result[f"{name}/unit"][row, column]) for name in TEST_METRICS]
                shown = ("" if value is None else f"{value:.6g}" for value in values)
                writer.writerow([unit["case_id"], unit["index"], cls, *shown])
    return summary


# --------------------------------------------------------------------------- the run folder


@dataclass
class LoadedRun:
    """A finished or interrupted run, read back by :func:`load_run`.

    Attributes:
        out_dir: the run folder.
        config: its resolved config.
        model: the network with the requested weights, in evaluation mode, on the CPU.
        envelope: the envelope with its ledger (from ``last.pt``), or None without one.
        data_info: num_classes, in_channels, out_channels, spatial_dims, class_names, eval_unit, num_train.
        epoch: the epoch of the loaded weights; best_epoch: the best validation epoch (or None).
        history: the rows of ``log.csv``; results: ``results.json`` (None if absent).
    """

    out_dir: Path
    config: RunConfig
    model: nn.Module
    envelope: TopKBottomSigma | None
    data_info: dict[str, Any]
    epoch: int
    best_epoch: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] | None = None


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [{key: (float(value) if value not in ("", None) else None) for key, value in row.items()}
                for row in csv.DictReader(handle)]


def load_run(out_dir: str | Path, which: str = "selected") -> LoadedRun:
    """Read a run folder: config, model weights (``"selected"``, ``"best"`` or ``"last"``), envelope, log.

    ``"selected"`` is the model the run evaluated on the test split (``train.select``).
    """
    out_dir = Path(out_dir)
    if which not in ("selected", "best", "last"):
        raise ValueError(f"Expected `which` to be one of ['selected', 'best', 'last'], but got {which!r}.")
    last = load_checkpoint(out_dir / "last.pt")
    config = config_from_dict(last["config"])
    info = last["data_info"]
    if which == "selected":
        which = "best" if config.train.select == "best" and (out_dir / "best.pt").is_file() else "last"
    weights = last if which == "last" else load_checkpoint(out_dir / "best.pt")
    model = build_model(config.model, spatial_dims=info["spatial_dims"], in_channels=info["in_channels"],
                        out_channels=info["out_channels"], deep_supervision=config.train.deep_supervision)
    model.load_state_dict(weights["model"])
    model.eval()
    envelope = None
    if config.envelope is not None:
        envelope, _ = build_criterion(config, info["num_classes"], info["num_train"])
        envelope.load_state_dict(last["criterion"])
    results_path = out_dir / "results.json"
    return LoadedRun(out_dir=out_dir, config=config, model=model, envelope=envelope, data_info=dict(info),
                     epoch=int(weights["epochs_completed"]), best_epoch=last["best_epoch"],
                     history=_read_log(out_dir / "log.csv"),
                     results=json.loads(results_path.read_text()) if results_path.is_file() else None)


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    columns = list(LOG_COLUMNS)
    for row in history:
        columns.extend(key for key in row if key not in columns)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in history:
            writer.writerow({key: ("" if value is None else value) for key, value in row.items()})


# --------------------------------------------------------------------------- interruption


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop stops after the current step. A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------- the loop


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Expected `train.device` to be a device this machine has, but got {name!r} "
                         f"(CUDA is not available).")
    if device.type == "cuda" and device.index is None:  # one GPU per torchrun process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _check_splits(splits: Any) -> None:
    for name in ("train", "val", "test"):
        dataset = getattr(splits, name)
        if len(dataset) == 0:
            raise ValueError(f"Expected the {name} split to hold samples, but got an empty split.")
    sample = splits.train[0]
    if not isinstance(sample, dict) or any(key not in sample for key in SAMPLE_KEYS):
        got = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
        raise TypeError(f"Expected the samples of the train split to be dicts with keys {list(SAMPLE_KEYS)}, "
                        f"but got {got}.")


def train(
    config: RunConfig,
    *,
    splits: Any = None,
    resume: bool | str | Path = False,
    overwrite: bool = False,
) -> RunResult:
    """Train, validate and test one run; write its folder (``config.train.out_dir``).

    Args:
        config: the run (see :mod:`seglosses.lab.config`).
        splits: prebuilt :class:`~seglosses.lab.data.DataSplits` (or any object with the same
            attributes); None builds them from ``config.data``.
        resume: True continues from ``out_dir/last.pt``, a path from that checkpoint; the
            checkpoint's config must equal ``config`` (up to :data:`~seglosses.lab.config.RESUMABLE_CHANGES`).
        overwrite: start afresh even if ``out_dir`` already holds a checkpoint.

    Returns:
        A :class:`RunResult`.
    """
    check_config(config)
    out_dir = Path(config.train.out_dir)
    owns_group = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and config.train.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        owns_group = True
    try:
        return _train(config, out_dir, splits, resume, overwrite)
    finally:
        if owns_group:
            dist.destroy_process_group()


def _train(config: RunConfig, out_dir: Path, splits: Any, resume: bool | str | Path, overwrite: bool) -> RunResult:
    rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    main_process = rank == 0
    run, opt = config.train, config.optim
    device = _resolve_device(run.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if device.type == "cpu" and run.flush_denormal:
        # Near-zero envelope weights give denormal gradients, which make CPU kernels several times slower.
        # (A process-wide setting: PyTorch offers no way to read it back.)
        torch.set_flush_denormal(True)
    if run.batch_size % world:
        raise ValueError(f"Expected `train.batch_size` to be divisible by the {world} processes, "
                         f"but got {run.batch_size}.")
    local_batch = run.batch_size // world

    # Resume or start afresh: never overwrite a run by accident.
    checkpoint_path = out_dir / "last.pt" if resume is True else (Path(resume) if resume else None)
    checkpoint = None
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path, map_location="cpu")
        differences = {key: values for key, values in config_diff(checkpoint["config"], config).items()
                       if key not in RESUMABLE_CHANGES}
        if differences:
            shown = "; ".join(f"{key}: checkpoint {a!r}, now {b!r}" for key, (a, b) in differences.items())
            raise ValueError(f"Expected `config` to equal the config of the checkpoint {checkpoint_path} to "
                             f"resume it, but got differences in {shown}.")
    elif (out_dir / "last.pt").exists() and not overwrite:
        raise FileExistsError(f"Expected `train.out_dir` to hold no run, but got {str(out_dir)!r} with a "
                              f"last.pt: pass resume=True to continue it or overwrite=True to start afresh.")
    if main_process:
        if overwrite and checkpoint is None:  # nothing of the old run may pass for the new one's
            for stale in [*RUN_FILES, *(out_dir / "envelope").glob("epoch_*.npz")]:
                (out_dir / stale).unlink(missing_ok=True)
        (out_dir / "envelope").mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")

    # Data, model, loss, optimiser, schedule.
    _seed_everything(run.seed)
    if splits is None:
        from seglosses.lab.data import build_splits

        splits = build_splits(config.data, out_dir if main_process else None)
    _check_splits(splits)
    num_train = len(splits.train)
    criterion, out_channels = build_criterion(config, splits.num_classes, num_train)
    criterion = criterion.to(device)
    envelope = criterion if isinstance(criterion, TopKBottomSigma) else None
    model = build_model(config.model, spatial_dims=splits.spatial_dims, in_channels=splits.in_channels,
                        out_channels=out_channels, deep_supervision=run.deep_supervision,
                        image_size=config.data.image_size).to(device)
    network = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if opt.name == "adamw":
        optimizer = torch.optim.AdamW(network.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    else:
        optimizer = torch.optim.SGD(network.parameters(), lr=opt.lr, momentum=opt.momentum,
                                    weight_decay=opt.weight_decay, nesterov=opt.momentum > 0)
    steps_per_epoch = math.ceil(math.ceil(num_train / world) / local_batch)
    total_steps, warmup_steps = run.epochs * steps_per_epoch, round(opt.warmup_epochs * steps_per_epoch)

    def schedule(step: int) -> float:
        return lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps, schedule=opt.schedule,
                         poly_power=opt.poly_power)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    use_amp = run.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    data_info = {"num_classes": splits.num_classes, "in_channels": splits.in_channels, "out_channels": out_channels,
                 "spatial_dims": splits.spatial_dims, "class_names": list(splits.class_names),
                 "eval_unit": splits.eval_unit, "num_train": num_train}
    writer = None
    if run.tensorboard and main_process:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("Expected `train.tensorboard` to be false when the tensorboard package is not "
                             "installed, but got true.") from None
        writer = SummaryWriter(str(out_dir / "tensorboard"))

    # State that a checkpoint carries.
    epoch, start_step, history = 1, 0, []
    best_epoch, best_dice, train_time = None, -math.inf, 0.0
    partial: dict[str, Any] = {}
    if checkpoint is not None:
        network.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        if envelope is not None:
            envelope.load_state_dict(checkpoint["criterion"])
        _set_rng_state(checkpoint["rng"])
        epoch, start_step, history = checkpoint["epoch"], checkpoint["step"], list(checkpoint["history"])
        best_epoch = checkpoint["best_epoch"]
        best_dice = -math.inf if checkpoint["best_val_dice"] is None else checkpoint["best_val_dice"]
        train_time, partial = checkpoint["train_time_s"], checkpoint["partial"]
        if main_process:
            _write_log(out_dir / "log.csv", history)

    def checkpoint_state(next_epoch: int, step: int, partial_sums: dict[str, Any]) -> dict[str, Any]:
        return {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "criterion": envelope.state_dict() if envelope is not None else {},
                "rng": _rng_state(), "epoch": next_epoch, "step": step,
                "epochs_completed": next_epoch - 1, "history": history, "best_epoch": best_epoch,
                "best_val_dice": None if best_epoch is None else best_dice, "train_time_s": train_time,
                "partial": partial_sums, "config": config_to_dict(config), "data_info": data_info}

    if envelope is not None and envelope.config.ledger_init == "prepass" and checkpoint is None:
        prepass_loader = _loader(splits.train, local_batch, _Order(), run.num_workers, device.type == "cuda")
        prepass_loader.sampler.indices = _epoch_order(splits.train, run.seed, 0, rank, world, shuffle=False)
        with torch.no_grad():
            envelope.prepass(((b["image"].to(device), b["mask"].to(device), b["index"].to(device))
                              for b in prepass_loader), model=model)

    order = _Order()
    loader = _loader(splits.train, local_batch, order, run.num_workers, device.type == "cuda")
    show_bars = run.progress and main_process and sys.stderr.isatty()
    interrupted, last_checkpoint = False, time.perf_counter()
    with _StopFlag() as stop:
        while epoch <= run.epochs:
            epoch_start = time.perf_counter()
            shard = _epoch_order(splits.train, run.seed, epoch, rank, world)
            order.indices = shard[start_step * local_batch:]
            sums = {"loss": torch.zeros((), dtype=torch.float64, device=device),
                    "unscaled": torch.zeros((), dtype=torch.float64, device=device),
                    "images": torch.zeros((), dtype=torch.float64, device=device)}
            env_sums: dict[str, Any] = {}
            records: list[Tensor] = []  # (index, weight, rank, kept fraction, image loss) per image
            loop_time = 0.0
            if partial:  # resuming inside this epoch; under DDP rank 0 holds the sums of every process
                loop_time = partial["loop_time"]
                if main_process:
                    sums = {key: value.to(device) for key, value in partial["sums"].items()}
                    env_sums = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in partial["env_sums"].items()}
                    records = [partial["records"].to(device)] if partial["records"].numel() else []
                partial = {}
            model.train()
            bar = None
            if show_bars:
                from tqdm.auto import tqdm

                bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"epoch {epoch}/{run.epochs}",
                           leave=False, dynamic_ncols=True)
            step, stop_now = start_step, False
            loop_start = time.perf_counter()
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                masks = batch["mask"].to(device, non_blocking=True)
                indices = batch["index"].to(device, non_blocking=True)
                if run.augment.enabled:
                    draws = _augment_draws(run.seed, epoch, batch["index"].tolist())
                    images, (masks,) = augment_batch(images, [masks], draws, run.augment)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    outputs = model(images)
                    loss = _loss_value(criterion, outputs, masks, indices, epoch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1

                count = images.shape[0]
                sums["loss"] += loss.detach().double() * count
                sums["images"] += count
                if envelope is not None:
                    diagnostics = envelope.diagnostics
                    base_mean = getattr(diagnostics, "base_loss_mean", None)  # the base loss, no selection or weights
                    sums["unscaled"] += (diagnostics.image_losses.detach().double().sum() if base_mean is None
                                         else base_mean.detach().double() * count)
                    _add_diagnostics(env_sums, diagnostics)
                    records.append(torch.stack([indices.double(), diagnostics.weights.to(device).double(),
                                                diagnostics.ranks.to(device).double(),
                                                diagnostics.kept_fraction.to(device).double(),
                                                diagnostics.image_losses.detach().double()], 1))
                else:
                    sums["unscaled"] += loss.detach().double() * count
                if bar is not None:
                    elapsed = loop_time + time.perf_counter() - loop_start
                    bar.set_postfix(loss=f"{loss.item():.4f}",
                                    img_s=f"{float(sums['images']) * world / max(elapsed, 1e-9):.1f}")
                    bar.update(1)
                stop_now = stop.requested
                if world > 1:
                    flag = torch.tensor([float(stop_now)], device=device)
                    dist.all_reduce(flag)
                    stop_now = bool(flag.item())
                if stop_now and step < steps_per_epoch:
                    loop_time += time.perf_counter() - loop_start
                    train_time += time.perf_counter() - epoch_start
                    if world > 1:  # rank 0 saves the epoch's partial sums of every process
                        for value in sums.values():
                            dist.all_reduce(value)
                        parts: list[Any] = [None] * world
                        dist.all_gather_object(parts, torch.cat(records).cpu() if records else torch.zeros(0, 5))
                        records = [torch.cat(parts).to(device)]
                    if main_process:
                        saved = {"sums": {k: v.cpu() for k, v in sums.items()},
                                 "env_sums": {k: v.cpu() if isinstance(v, Tensor) else v for k, v in env_sums.items()},
                                 "loop_time": loop_time,
                                 "records": torch.cat(records).cpu() if records else torch.zeros(0, 5)}
                        save_checkpoint(checkpoint_state(epoch, step, saved), out_dir / "last.pt")
                    interrupted = True
                    break
            if bar is not None:
                bar.close()
            if interrupted:
                break
            loop_time += time.perf_counter() - loop_start
            start_step = 0

            # Epoch statistics (summed over processes).
            if world > 1:
                for value in sums.values():
                    dist.all_reduce(value)
            row: dict[str, Any] = {
                "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                "train_loss": float(sums["loss"] / sums["images"]),
                "train_loss_unscaled": float(sums["unscaled"] / sums["images"]),
                "val_dice": None, "val_hd95": None,
            }
            validate = (run.val_every and epoch % run.val_every == 0) or epoch == run.epochs
            if validate:
                result, _ = evaluate(network, splits.val, num_classes=splits.num_classes, eval_unit=splits.eval_unit,
                                     batch_size=local_batch, device=device, num_workers=run.num_workers, amp=use_amp)
                row["val_dice"], row["val_hd95"] = _number(result["dice"]), _number(result["hd95"])
                if row["val_dice"] is not None and row["val_dice"] > best_dice:
                    best_dice, best_epoch = row["val_dice"], epoch
                    if main_process:
                        save_checkpoint({"model": network.state_dict(), "epochs_completed": epoch,
                                         "val_dice": best_dice, "config": config_to_dict(config),
                                         "data_info": data_info}, out_dir / "best.pt")
            if envelope is not None:
                steps = env_sums.pop("_steps", 1)
                row.update({f"env_{key}": float(value) / steps for key, value in env_sums.items()})
                box = envelope.selection(epoch)
                row.update({"env_k": box.k, "env_alpha": box.alpha, "env_n_over_k": num_train / box.k})
                table = torch.cat(records) if records else torch.zeros(0, 5, dtype=torch.float64, device=device)
                if world > 1:
                    parts: list[Any] = [None] * world
                    dist.all_gather_object(parts, table.cpu())
                    table = torch.cat(parts)
                if main_process:
                    table = table.cpu()
                    per_image = {name: np.full(num_train, np.nan) for name in ("weights", "ranks", "kept_fraction",
                                                                               "image_losses")}
                    positions = table[:, 0].long().numpy()  # later visits overwrite earlier ones
                    for column, name in enumerate(per_image, start=1):
                        per_image[name][positions] = table[:, column].numpy()
                    np.savez(out_dir / "envelope" / f"epoch_{epoch:03d}.npz",
                             ledger=envelope.ledger.cpu().numpy(), **per_image)
            train_time += time.perf_counter() - epoch_start
            row["time_s"] = time.perf_counter() - epoch_start
            row["images_per_s"] = float(sums["images"]) / max(loop_time, 1e-9)
            history.append(row)
            epoch += 1
            if main_process:
                _write_log(out_dir / "log.csv", history)
                # last.pt after the last epoch, on a stop, and otherwise at most every checkpoint_every_s.
                if stop_now or epoch > run.epochs or time.perf_counter() - last_checkpoint >= run.checkpoint_every_s:
                    save_checkpoint(checkpoint_state(epoch, 0, {}), out_dir / "last.pt")
                    last_checkpoint = time.perf_counter()
                if writer is not None:
                    for key, value in row.items():
                        if key != "epoch" and isinstance(value, (int, float)) and value is not None:
                            writer.add_scalar(key, value, row["epoch"])
                if run.progress and not show_bars:
                    shown = ", ".join(f"{key} {row[key]:.4g}" for key in ("train_loss", "val_dice", "time_s")
                                      if row[key] is not None)
                    print(f"epoch {row['epoch']}/{run.epochs}: {shown}", flush=True)
            if world > 1:
                dist.barrier()
            if stop_now and epoch <= run.epochs:  # stopped on an epoch's last step: last.pt resumes here
                interrupted = True
                break
    if writer is not None:
        writer.close()
    result = RunResult(out_dir=out_dir, config=config, epochs_completed=epoch - 1, history=history,
                       best_epoch=best_epoch, best_val_dice=None if best_epoch is None else best_dice,
                       selected=run.select, test=None, interrupted=interrupted)
    if interrupted:
        if main_process:
            print(f"interrupted: resumable checkpoint {out_dir / 'last.pt'} (epoch {epoch}, step {step})", flush=True)
        return result

    # Test: the selected weights.
    if run.select == "best" and best_epoch is not None:
        network.load_state_dict(load_checkpoint(out_dir / "best.pt", map_location=device)["model"])
    metrics_result, units = evaluate(network, splits.test, num_classes=splits.num_classes,
                                     eval_unit=splits.eval_unit, metrics=TEST_METRICS, batch_size=local_batch,
                                     device=device, num_workers=run.num_workers, amp=use_amp,
                                     nsd_tolerance=run.nsd_tolerance)
    if main_process:
        sample = splits.test[0]
        spacing_known = "spacing" in sample and (splits.eval_unit == "image" or len(sample["spacing"]) == 3)
        result.test = _write_results(out_dir, metrics_result, units, splits.class_names, {
            "split": "test", "eval_unit": splits.eval_unit, "selected_model": run.select,
            "evaluated_epoch": best_epoch if run.select == "best" and best_epoch is not None else epoch - 1,
            "best_epoch": best_epoch, "best_val_dice": result.best_val_dice, "epochs": epoch - 1,
            "train_time_s": train_time, "distances_in": "spacing units (mm)" if spacing_known else "pixels",
            "class_names": list(splits.class_names)})
    return result
