"""The synthetic boundary transformations and the (tiny, seeded) training of InverseForm's network."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from seglosses.inverseform import InverseTransformNet, affine_from_log
from seglosses.inverseform_training import (
    TrainingConfig,
    random_log_affine,
    random_masks,
    similarity_parameters,
    synthetic_pairs,
    train,
)


def _pixel_centres(size: int) -> torch.Tensor:
    axis = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=1)


def test_warped_masks_match_grid_sample() -> None:
    """Drawing the shapes at Theta x equals grid_sample of the drawn mask with affine_grid(Theta), away from
    the tile border (where grid_sample has no content) up to bilinear interpolation."""
    n, size = 16, 32
    log_affine = random_log_affine(n, torch.Generator().manual_seed(3))
    theta = affine_from_log(log_affine)
    points = _pixel_centres(size)
    masks = random_masks(points, n, seed=11).view(n, 1, size, size)
    warped_points = torch.einsum("nij,pj->npi", theta[:, :, :2], points) + theta[:, :, 2].unsqueeze(1)
    drawn = random_masks(warped_points, n, seed=11).view(n, 1, size, size)
    sampled = F.grid_sample(masks, F.affine_grid(theta, (n, 1, size, size), align_corners=False), align_corners=False)
    inside = (warped_points.abs() < 1 - 2 / size).all(dim=-1).view(n, 1, size, size)
    assert inside.float().mean() > 0.5
    assert (drawn - sampled).abs()[inside].mean() < 0.01
    assert (drawn - sampled).abs()[inside].max() < 0.5  # interpolation across the sharpest edges


def test_pairs_are_seeded_and_identity_gives_equal_tiles() -> None:
    first, second = synthetic_pairs(4, seed=5), synthetic_pairs(4, seed=5)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)
    a, b, parameters = synthetic_pairs(4, seed=6, log_affine=torch.zeros(4, 6))
    assert torch.equal(a, b) and a.shape == (4, 1, 32, 32) and parameters.abs().max() == 0
    assert a.min() >= 0 and a.max() <= 1 and a.amax(dim=(1, 2, 3)).gt(0).any()


def test_similarity_parameters_of_a_known_transformation() -> None:
    angle, log_scale, tx, ty = 0.2, math.log(1.1), 0.1, -0.05
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    theta = torch.cat([1.1 * rotation, torch.tensor([[tx], [ty]])], dim=1).double()
    # the log of a similarity: solve for it through the 3 x 3 homogeneous matrix
    homogeneous = torch.cat([theta, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
    eigenvalues, eigenvectors = torch.linalg.eig(homogeneous)
    log_matrix = (eigenvectors @ torch.diag(eigenvalues.log()) @ torch.linalg.inv(eigenvectors)).real
    parameters = similarity_parameters(log_matrix[:2].reshape(1, 6))
    assert math.isclose(parameters["rotation"].item(), angle, abs_tol=1e-7)
    assert math.isclose(parameters["scale"].item(), math.exp(log_scale), abs_tol=1e-7)
    assert math.isclose(parameters["tx"].item(), tx, abs_tol=1e-7)
    assert math.isclose(parameters["ty"].item(), ty, abs_tol=1e-7)


def test_tiny_training_run_is_reproducible_and_loadable(tmp_path) -> None:
    config = TrainingConfig(steps=3, batch_size=4, validation_pairs=8, validate_every=2)
    records = [train(config, tmp_path / f"run{k}" / "net.pt", log=lambda _: None) for k in range(2)]
    states = [torch.load(tmp_path / f"run{k}" / "net.pt", weights_only=True) for k in range(2)]
    assert states[0].keys() == InverseTransformNet().state_dict().keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert records[0]["steps_done"] == 3 and [h["step"] for h in records[0]["history"]] == [2, 3]
    assert records[0]["history"][-1]["validation_rmse"] == records[1]["history"][-1]["validation_rmse"]
    assert (tmp_path / "run0" / "net.json").is_file()
    net = InverseTransformNet()
    net.load_state_dict(states[0])
