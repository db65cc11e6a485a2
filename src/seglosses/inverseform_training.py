"""Train InverseForm's inverse-transformation network on synthetic boundary transformations.

Each training pair is a random mask (a union of ellipses, convex polygons and half-planes, with soft
edges of random width) drawn twice: at the pixel centres ``x`` and at ``Theta x`` for a random affine
``Theta = exp(A)``. Drawing the shapes analytically at the warped coordinates gives exactly what
``grid_sample(mask, affine_grid(Theta))`` would give on an infinite canvas, without interpolation blur
or content missing at the tile border. Both masks go through :func:`~seglosses.inverseform.soft_boundary`
(the map the loss feeds the network) and the network regresses ``A`` with a mean squared error.
Everything is seeded: the same seed and steps give the same checkpoint on the same machine.

Run (writes the checkpoint and a JSON record of the run and of its held-out errors)::

    OMP_NUM_THREADS=1 python -m seglosses.inverseform_training --steps 1600 --max-seconds 470 \\
        --out src/seglosses/weights/inverse_transform_net.pt
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from seglosses.inverseform import CHECKPOINT, TILE_SIZE, InverseTransformNet, affine_from_log, soft_boundary

__all__ = [
    "TrainingConfig",
    "evaluate",
    "random_log_affine",
    "random_masks",
    "recovery_errors",
    "similarity_parameters",
    "synthetic_pairs",
    "train",
]


# --------------------------------------------------------------------------- synthetic shapes


def _pixel_centres(size: int, device: torch.device | str = "cpu") -> Tensor:
    """(size*size, 2) normalised (x, y) pixel centres, ``affine_grid``'s convention (align_corners=False)."""
    axis = (torch.arange(size, dtype=torch.float32, device=device) * 2 + 1) / size - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=1)


def _uniform(shape, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _ellipse_distance(points: Tensor, generator: torch.Generator) -> Tensor:
    """Approximate signed distance (positive inside) of one random ellipse per mask; points (N, P, 2)."""
    n = points.shape[0]
    centre = _uniform((n, 1, 2), -0.7, 0.7, generator)
    axes = _uniform((n, 1, 2), 0.2, 0.9, generator)
    angle = _uniform((n, 1), -math.pi, math.pi, generator)
    offset = points - centre
    u = offset[..., 0] * angle.cos() + offset[..., 1] * angle.sin()
    v = -offset[..., 0] * angle.sin() + offset[..., 1] * angle.cos()
    radius = torch.sqrt((u / axes[..., 0]) ** 2 + (v / axes[..., 1]) ** 2)
    return (1.0 - radius) * axes.amin(dim=-1)


def _polygon_distance(points: Tensor, generator: torch.Generator) -> Tensor:
    """Signed distance (positive inside) of one random convex polygon (3 to 7 sides) per mask."""
    n = points.shape[0]
    sides = 7
    start = _uniform((n, 1), 0.0, 2 * math.pi, generator)
    gaps = _uniform((n, sides), 0.4, 1.0, generator)
    used = torch.randint(3, sides + 1, (n, 1), generator=generator)
    gaps = torch.where(torch.arange(sides) < used, gaps, 0.0)
    normal_angles = start + 2 * math.pi * gaps.cumsum(dim=1) / gaps.sum(dim=1, keepdim=True)
    normals = torch.stack([normal_angles.cos(), normal_angles.sin()], dim=-1)  # (N, K, 2)
    reach = _uniform((n, sides), 0.25, 0.8, generator)
    centre = _uniform((n, 1, 2), -0.6, 0.6, generator)
    along = torch.einsum("npd,nkd->npk", points - centre, normals)
    margins = torch.where(torch.arange(sides) < used, reach, math.inf).unsqueeze(1) - along
    return margins.amin(dim=-1)


def _half_plane_distance(points: Tensor, generator: torch.Generator) -> Tensor:
    """Signed distance of one random straight border per mask (an organ wall crossing the tile)."""
    n = points.shape[0]
    angle = _uniform((n, 1), -math.pi, math.pi, generator)
    normal = torch.stack([angle.cos(), angle.sin()], dim=-1)
    offset = _uniform((n, 1), -0.6, 0.6, generator)
    return offset - (points * normal).sum(dim=-1)


def random_masks(points: Tensor, n: int, seed: int) -> Tensor:
    """(n, P) soft masks in [0, 1] of a seeded random union of 1-3 shapes, evaluated at ``points``.

    ``points`` (P, 2) or (n, P, 2) normalised coordinates. The same ``seed`` and ``n`` draw the same
    shapes at any ``points``, so warped copies are exact.

    Example:
        >>> points = torch.rand(5, 2) * 2 - 1
        >>> random_masks(points, 4, seed=0).shape
        torch.Size([4, 5])
    """
    generator = torch.Generator().manual_seed(seed)
    if points.ndim == 2:
        points = points.expand(n, -1, -1)
    kinds = torch.multinomial(torch.tensor([0.35, 0.45, 0.2]), 3 * n, replacement=True, generator=generator)
    count = torch.randint(1, 4, (n, 1), generator=generator)
    shapes = (_ellipse_distance, _polygon_distance, _half_plane_distance)
    distances = torch.stack([draw(points, generator) for _ in range(3) for draw in shapes])
    distances = distances.view(3, 3, n, -1)  # (object, kind, n, P)
    chosen = distances.gather(1, kinds.view(3, 1, n, 1).expand(3, 1, n, points.shape[1])).squeeze(1)
    present = (torch.arange(3).view(3, 1, 1) < count.view(1, n, 1))
    union = torch.where(present, chosen, -math.inf).amax(dim=0)
    # Edge width from crisp (0.1 px, a label map) to soft (1 px, a network's probabilities), mostly crisp.
    pixel = 2.0 / TILE_SIZE
    width = (0.1 + 0.9 * torch.rand((n, 1), generator=generator) ** 2) * pixel
    return torch.sigmoid(union / width)


def random_log_affine(n: int, generator: torch.Generator) -> Tensor:
    """(n, 6) random log-affine parameters: rotation, log-scale, anisotropy, shear and translation,
    each switched off in 30% of the pairs, and the whole scaled down in half of them (small
    transformations are the ones training lands on)."""
    rotation = _uniform((n,), -0.35, 0.35, generator)
    log_scale = _uniform((n,), -0.2, 0.2, generator)
    stretch = _uniform((n,), -0.12, 0.12, generator)
    shear = _uniform((n,), -0.12, 0.12, generator)
    shift = _uniform((n, 2), -0.3, 0.3, generator)
    components = torch.stack([rotation, log_scale, stretch, shear, shift[:, 0], shift[:, 1]], dim=1)
    components = components * (torch.rand((n, 6), generator=generator) > 0.3)
    shrink = torch.where(torch.rand((n, 1), generator=generator) < 0.5, torch.rand((n, 1), generator=generator), 1.0)
    rotation, log_scale, stretch, shear, tx, ty = (components * shrink).unbind(dim=1)
    return torch.stack(
        [log_scale + stretch, shear - rotation, tx, shear + rotation, log_scale - stretch, ty], dim=1
    )


def synthetic_pairs(n: int, seed: int, *, log_affine: Tensor | None = None,
                    tile_size: int = TILE_SIZE) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` seeded pairs of boundary tiles (a, b), each (n, 1, T, T), with ``b(x) = a(Theta x)``, and
    the (n, 6) log-affine parameters of ``Theta`` (random, or ``log_affine`` when given).

    Example:
        >>> a, b, parameters = synthetic_pairs(2, seed=0, log_affine=torch.zeros(2, 6))
        >>> a.shape, bool(torch.allclose(a, b))
        (torch.Size([2, 1, 32, 32]), True)
    """
    generator = torch.Generator().manual_seed(seed)
    if log_affine is None:
        log_affine = random_log_affine(n, generator)
    shape_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    points = _pixel_centres(tile_size)
    theta = affine_from_log(log_affine.to(torch.float32))  # (n, 2, 3)
    warped = torch.einsum("nij,pj->npi", theta[:, :, :2], points) + theta[:, :, 2].unsqueeze(1)
    masks = random_masks(points, n, shape_seed).view(n, 1, tile_size, tile_size)
    warped_masks = random_masks(warped, n, shape_seed).view(n, 1, tile_size, tile_size)
    return soft_boundary(masks), soft_boundary(warped_masks), log_affine


# --------------------------------------------------------------------------- evaluation


def similarity_parameters(log_affine: Tensor) -> dict[str, Tensor]:
    """Translation (tx, ty, normalised units: 2 / T per pixel), rotation (radians) and scale of the
    affine matrices of (N, 6) log-affine parameters (rotation and scale from the linear part's
    polar decomposition: exact for similarity transformations)."""
    theta = affine_from_log(log_affine.double())
    linear = theta[:, :, :2]
    rotation = torch.atan2(linear[:, 1, 0] - linear[:, 0, 1], linear[:, 0, 0] + linear[:, 1, 1])
    scale = torch.linalg.det(linear).abs().sqrt()
    return {"tx": theta[:, 0, 2], "ty": theta[:, 1, 2], "rotation": rotation, "scale": scale}


@torch.no_grad()
def recovery_errors(net: InverseTransformNet, seed: int, n: int = 256) -> dict[str, float]:
    """Median absolute errors of the recovered translation (pixels), rotation (degrees) and scale on
    held-out pairs with a pure translation, a pure rotation, a pure scaling, and identity."""
    generator = torch.Generator().manual_seed(seed)
    pixel = 2.0 / net.tile_size
    zeros = torch.zeros(n)
    cases = {
        "translation": torch.stack([zeros, zeros, _uniform((n,), -0.3, 0.3, generator), zeros, zeros,
                                    _uniform((n,), -0.3, 0.3, generator)], dim=1),
        "rotation": (lambda r: torch.stack([zeros, -r, zeros, r, zeros, zeros], dim=1))(
            _uniform((n,), -0.35, 0.35, generator)),
        "scale": (lambda s: torch.stack([s, zeros, zeros, zeros, s, zeros], dim=1))(
            _uniform((n,), -0.2, 0.2, generator)),
        "identity": torch.zeros(n, 6),
    }
    errors = {}
    for offset, (name, truth) in enumerate(cases.items()):
        a, b, _ = synthetic_pairs(n, seed + 1 + offset, log_affine=truth, tile_size=net.tile_size)
        if name == "identity":  # the same boundaries drawn twice would give exactly 0: perturb one copy
            b = (b + 0.05 * torch.randn(b.shape, generator=generator)).clamp(0.0, 1.0)
        predicted, expected = similarity_parameters(net(a, b)), similarity_parameters(truth)
        shift = torch.hypot(predicted["tx"] - expected["tx"], predicted["ty"] - expected["ty"]) / pixel
        errors[f"{name}_shift_px"] = float(shift.median())
        rotation = torch.rad2deg(predicted["rotation"] - expected["rotation"]).abs()
        errors[f"{name}_rotation_deg"] = float(rotation.median())
        errors[f"{name}_scale"] = float((predicted["scale"] - expected["scale"]).abs().median())
    return errors


@torch.no_grad()
def evaluate(net: InverseTransformNet, pairs: tuple[Tensor, Tensor, Tensor]) -> float:
    """Root mean squared error of the predicted log-affine parameters on fixed pairs."""
    a, b, truth = pairs
    return float(((net(a, b) - truth) ** 2).mean().sqrt())


# --------------------------------------------------------------------------- training


@dataclass
class TrainingConfig:
    """The whole recipe of a run; saved in the JSON record beside the checkpoint."""

    seed: int = 0
    steps: int = 1600
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    validation_pairs: int = 512
    validate_every: int = 150
    threads: int = 1
    max_seconds: float = 0.0  # stop early (recorded) after this long; 0: no limit


def train(config: TrainingConfig, out: Path, log=print) -> dict:
    """Train a network from ``config`` (AdamW, cosine learning rate), save its state dict to ``out`` and a
    record (config, losses, held-out errors, time, versions) to ``out`` with a .json suffix."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    net = InverseTransformNet()
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.05
    )
    validation = synthetic_pairs(config.validation_pairs, seed=10_000_000 + config.seed)
    history, start, steps_done = [], time.perf_counter(), 0
    for step in range(1, config.steps + 1):
        a, b, truth = synthetic_pairs(config.batch_size, seed=config.seed * 1_000_003 + step)
        loss = ((net(a, b) - truth) ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        steps_done = step
        out_of_time = config.max_seconds > 0 and time.perf_counter() - start > config.max_seconds
        if step % config.validate_every == 0 or step == config.steps or out_of_time:
            net.eval()
            rmse = evaluate(net, validation)
            net.train()
            history.append({"step": step, "train_mse": float(loss.detach()), "validation_rmse": rmse,
                            "seconds": round(time.perf_counter() - start, 1)})
            log(json.dumps(history[-1]))
        if out_of_time:
            break
    seconds = time.perf_counter() - start
    net.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}
    torch.save(state, out)
    record = {
        "config": asdict(config),
        "steps_done": steps_done,
        "train_seconds": round(seconds, 1),
        "validation_rmse": history[-1]["validation_rmse"],
        "held_out_median_errors": recovery_errors(net, seed=20_000_000 + config.seed),
        "history": history,
        "parameters": sum(t.numel() for t in state.values()),
        "checkpoint_bytes": out.stat().st_size,
        "tile_size": net.tile_size,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "command": " ".join(sys.argv),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log(json.dumps({k: record[k] for k in ("train_seconds", "validation_rmse", "held_out_median_errors")}))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = TrainingConfig()
    for field, value in asdict(defaults).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    train(TrainingConfig(**args), out)


if __name__ == "__main__":
    main()
