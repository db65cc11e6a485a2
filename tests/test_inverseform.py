"""InverseForm: the shipped inverse-transformation network and the loss built on it.

Oracles: known affine transformations of synthetic boundaries (drawn analytically at warped coordinates,
checked against ``grid_sample`` in tests/test_inverseform_training.py), hand-built shifts of a
prediction, and the exact antisymmetry of the network.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seglosses import create_loss
from seglosses.inverseform import (
    CHECKPOINT,
    InverseFormLoss,
    InverseTransformNet,
    affine_from_log,
    inverse_transform_net,
    inverseform_distance,
    inverseform_loss,
    soft_boundary,
    training_record,
)
from seglosses.inverseform_training import similarity_parameters, synthetic_pairs

HELD_OUT_SEED = 77_000_001  # training draws seeds step + 1_000_003 * seed and 10_000_000 + seed; never this one
PIXEL = 2.0 / 32  # one pixel in the normalised coordinates of a 32-pixel tile


def _net() -> InverseTransformNet:
    return inverse_transform_net("cpu", torch.float32)


# --------------------------------------------------------------------------- checkpoint


def test_checkpoint_is_a_small_state_dict_loaded_safely() -> None:
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    expected = InverseTransformNet().state_dict()
    assert set(state) == set(expected)
    assert all(isinstance(t, torch.Tensor) and t.shape == expected[k].shape for k, t in state.items())
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert CHECKPOINT.stat().st_size < 2 * 1024 * 1024
    record = training_record()
    assert record["checkpoint_bytes"] == CHECKPOINT.stat().st_size
    assert record["parameters"] == sum(t.numel() for t in state.values())


def test_checkpoint_is_package_data() -> None:
    """pyproject.toml's package-data ships the checkpoint and its record in the wheel."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    package_line = next(line for line in section.splitlines() if line.startswith('"seglosses" ='))
    for path in (CHECKPOINT, CHECKPOINT.with_suffix(".json")):
        assert f'"{path.relative_to(CHECKPOINT.parents[1]).as_posix()}"' in package_line


def test_loaded_network_is_frozen_on_the_requested_device_and_dtype(device: torch.device) -> None:
    net = inverse_transform_net(device, torch.float64)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert all(p.device.type == device.type and p.dtype == torch.float64 for p in net.parameters())
    assert inverse_transform_net(device, torch.float64) is net  # one shared copy per device and dtype


# --------------------------------------------------------------------------- the network


def test_network_is_exactly_antisymmetric() -> None:
    a, b, _ = synthetic_pairs(8, seed=HELD_OUT_SEED)
    net = _net()
    with torch.no_grad():
        torch.testing.assert_close(net(a, b), -net(b, a))
        assert net(a, a).abs().max() == 0


def _recovered(kind: str, n: int = 128) -> tuple[dict, dict]:
    """Truth and prediction (similarity parameters) on held-out pairs with one kind of transformation."""
    generator = torch.Generator().manual_seed(HELD_OUT_SEED + 1)
    values = (torch.rand((n, 2), generator=generator) * 2 - 1).double()
    zero = torch.zeros(n, dtype=torch.float64)
    log_affine = {
        "translation": torch.stack([zero, zero, 0.25 * values[:, 0], zero, zero, 0.25 * values[:, 1]], dim=1),
        "rotation": torch.stack([zero, -0.3 * values[:, 0], zero, 0.3 * values[:, 0], zero, zero], dim=1),
        "scale": torch.stack([0.15 * values[:, 0], zero, zero, zero, 0.15 * values[:, 0], zero], dim=1),
    }[kind]
    a, b, _ = synthetic_pairs(n, seed=HELD_OUT_SEED + 2, log_affine=log_affine)
    with torch.no_grad():
        predicted = _net()(a, b).double()
    return similarity_parameters(log_affine), similarity_parameters(predicted)


def test_recovers_translations() -> None:
    """Shifts of up to 4 pixels in x and y: median error under 0.75 pixel, and a fifth of the shift."""
    truth, predicted = _recovered("translation")
    shift = torch.hypot(truth["tx"], truth["ty"]) / PIXEL
    error = torch.hypot(predicted["tx"] - truth["tx"], predicted["ty"] - truth["ty"]) / PIXEL
    assert error.median() < 0.75, error.median()
    assert error.median() < 0.2 * shift.median()


def test_recovers_rotations() -> None:
    """Rotations of up to 17 degrees: median error under 3 degrees."""
    truth, predicted = _recovered("rotation")
    error = torch.rad2deg((predicted["rotation"] - truth["rotation"]).abs())
    assert error.median() < 3.0, error.median()
    assert error.median() < 0.35 * torch.rad2deg(truth["rotation"].abs()).median()


def test_recovers_scalings() -> None:
    """Scalings by 0.86 to 1.16: median error of the scale factor under 0.03."""
    truth, predicted = _recovered("scale")
    error = (predicted["scale"] - truth["scale"]).abs()
    assert error.median() < 0.03, error.median()
    assert error.median() < 0.4 * (truth["scale"] - 1).abs().median()


def test_identity_pairs_give_near_identity() -> None:
    """The same boundaries give exactly zero; with 5% noise on the boundary pixels, about identity."""
    a, b, _ = synthetic_pairs(128, seed=HELD_OUT_SEED + 3, log_affine=torch.zeros(128, 6))
    generator = torch.Generator().manual_seed(HELD_OUT_SEED + 4)
    noisy = (b + 0.05 * torch.randn(b.shape, generator=generator) * (b > 0.05)).clamp(0.0, 1.0)
    with torch.no_grad():
        exact, perturbed = _net()(a, b), _net()(a, noisy)
    assert exact.abs().max() == 0
    parameters = similarity_parameters(perturbed.double())
    assert (torch.hypot(parameters["tx"], parameters["ty"]) / PIXEL).median() < 0.25
    assert torch.rad2deg(parameters["rotation"].abs()).median() < 0.75
    assert (parameters["scale"] - 1).abs().median() < 0.02


def test_network_refuses_wrong_tiles() -> None:
    net = InverseTransformNet()
    with pytest.raises(ValueError, match="`a`"):
        net(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="`b`"):
        net(torch.zeros(2, 1, 32, 32), torch.zeros(3, 1, 32, 32))
    with pytest.raises(ValueError, match="`tile_size`"):
        InverseTransformNet(tile_size=30)


def test_affine_from_log_inverts_by_negation() -> None:
    log_affine = 0.3 * torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    forward, backward = affine_from_log(log_affine), affine_from_log(-log_affine)
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(5, 1, 3)
    product = torch.cat([forward, bottom], dim=1) @ torch.cat([backward, bottom], dim=1)
    torch.testing.assert_close(product, torch.eye(3, dtype=torch.float64).expand(5, 3, 3))


# --------------------------------------------------------------------------- soft boundaries


def test_soft_boundary_of_a_one_hot_map() -> None:
    """8/9 on both sides of a straight border, 0 elsewhere; ignored pixels neither carry nor make one."""
    labels = torch.zeros(1, 6, 8, dtype=torch.long)
    labels[:, :, 4:] = 1
    one_hot = F.one_hot(labels, 2).movedim(-1, 1).double()
    boundary = soft_boundary(one_hot)
    expected = torch.zeros(6, 8, dtype=torch.float64)
    expected[:, 3:5] = 8 / 9
    torch.testing.assert_close(boundary[0, 0], expected)
    torch.testing.assert_close(boundary[0, 1], expected)
    valid = torch.ones(1, 6, 8, dtype=torch.float64)
    valid[:, :, 4:] = 0  # the whole right side ignored: no border left
    assert soft_boundary(one_hot, valid).abs().max() == 0


# --------------------------------------------------------------------------- the loss


def _scene(size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (1, size, size) with a disc (class 1) and a rectangle (class 2), and perfect logits."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    labels = torch.zeros(1, size, size, dtype=torch.long)
    labels[0][(y - 14) ** 2 + (x - 30) ** 2 <= 64] = 1
    labels[0, 28:40, 6:22] = 2
    return labels, 20.0 * F.one_hot(labels, 3).movedim(-1, 1).float()


def test_loss_is_zero_for_a_perfect_prediction_and_grows_with_a_shift() -> None:
    labels, perfect = _scene()
    for axis in (-1, -2):
        distances = [inverseform_distance(perfect.roll(shift, dims=axis), labels).item() for shift in range(5)]
        assert distances[0] < 1e-6
        assert distances[1] > 0.015
        assert all(near < far for near, far in zip(distances[1:], distances[2:], strict=False)), distances


def test_gradients_reach_the_logits_and_not_the_network() -> None:
    labels, perfect = _scene()
    logits = perfect.roll(2, dims=-1).requires_grad_(True)
    inverseform_loss(logits, labels, lambda_ce=0.0, lambda_inverseform=1.0).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    net = _net()
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())


def test_gradient_descent_on_the_term_reduces_it() -> None:
    """A few steps on the InverseForm term alone move a shifted prediction toward the target."""
    labels, perfect = _scene()
    logits = (0.25 * perfect.roll(2, dims=-1)).requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=0.3)
    values = []
    for _ in range(8):
        loss = inverseform_distance(logits, labels).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        values.append(loss.item())
    assert values[-1] < 0.9 * values[0], values


def _random_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 logits (2, 3, 7, 9), labels with about a third of the pixels ignored (255), the ignored mask."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(2, 3, 7, 9, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 7, 9), generator=generator)
    ignored = torch.rand(2, 7, 9, generator=generator) < 0.35
    return logits, labels.masked_fill(ignored, 255), ignored


def test_term_alone_passes_gradcheck_with_ignored_pixels() -> None:
    logits, labels, _ = _random_case()
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: inverseform_distance(z, labels, ignore_index=255), (logits,), eps=1e-6, atol=1e-5, rtol=1e-3
    )


def test_ignored_pixels_do_not_reach_the_term() -> None:
    logits, labels, ignored = _random_case(1)
    changed = logits.clone()
    mask = ignored.unsqueeze(1).expand_as(logits)
    changed[mask] = 10.0 * torch.randn(int(mask.sum()), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    value = inverseform_distance(logits, labels, ignore_index=255)
    torch.testing.assert_close(inverseform_distance(changed, labels, ignore_index=255), value)
    logits.requires_grad_(True)
    inverseform_distance(logits, labels, ignore_index=255).sum().backward()
    assert (logits.grad[mask] == 0).all() and logits.grad[~mask].abs().sum() > 0


def test_total_is_cross_entropy_plus_weighted_term() -> None:
    from seglosses.pixel import cross_entropy

    labels, perfect = _scene()
    logits = 0.2 * perfect.roll(1, dims=-1) + torch.randn(perfect.shape, generator=torch.Generator().manual_seed(0))
    expected = cross_entropy(logits, labels, reduction="none") + 0.3 * inverseform_distance(logits, labels)
    torch.testing.assert_close(inverseform_loss(logits, labels, reduction="none"), expected)
    torch.testing.assert_close(InverseFormLoss(reduction="none")(logits, labels), expected)


def test_tiling_pads_and_every_tile_counts() -> None:
    """A 40 x 70 image makes 2 x 3 tiles; a boundary moved to another tile keeps the per-tile sum."""
    labels = torch.zeros(1, 40, 70, dtype=torch.long)
    labels[0, 8:20, 8:20] = 1
    perfect = 20.0 * F.one_hot(labels, 2).movedim(-1, 1).float()
    moved_labels = labels.roll(32, dims=-1)
    single = inverseform_distance(perfect.roll(1, dims=-1), labels)
    moved = inverseform_distance(perfect.roll(1, dims=-1).roll(32, dims=-1), moved_labels)
    torch.testing.assert_close(single, moved)
    assert single.item() > 0


def test_module_stores_configuration_only() -> None:
    loss = create_loss("inverseform", lambda_inverseform=1.0)
    assert isinstance(loss, InverseFormLoss)
    assert len(loss.state_dict()) == 0 and len(list(loss.parameters())) == 0


def test_three_dimensional_input_is_refused() -> None:
    logits, labels = torch.zeros(1, 2, 4, 8, 8), torch.zeros(1, 4, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"`logits`.*2D"):
        inverseform_loss(logits, labels)
    with pytest.raises(ValueError, match="`logits`"):
        InverseFormLoss()(logits, labels)


@pytest.mark.parametrize(
    ("options", "argument", "error"),
    [
        ({"lambda_ce": -1.0}, "lambda_ce", ValueError),
        ({"lambda_inverseform": math.nan}, "lambda_inverseform", ValueError),
        ({"lambda_inverseform": "0.3"}, "lambda_inverseform", TypeError),
        ({"include_background": 1}, "include_background", TypeError),
        ({"downsample": 0}, "downsample", ValueError),
        ({"downsample": 2.0}, "downsample", TypeError),
    ],
)
def test_bad_options_name_the_argument(options: dict, argument: str, error: type) -> None:
    labels, perfect = _scene(16)
    with pytest.raises(error, match=f"`{argument}`"):
        InverseFormLoss(**options)
    with pytest.raises(error, match=f"`{argument}`"):
        inverseform_loss(perfect, labels, **options)


def test_runs_on_the_device_of_the_logits(device: torch.device) -> None:
    labels, perfect = _scene()
    logits = perfect.roll(2, dims=-1).to(device).requires_grad_(True)
    value = inverseform_loss(logits, labels.to(device))
    value.backward()
    assert value.device.type == device.type and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(value.cpu(), inverseform_loss(logits.detach().cpu(), labels), rtol=1e-4, atol=1e-5)


def test_downsample_averages_before_the_boundary_maps() -> None:
    """downsample=2: the network sees the boundary maps of the 2 x 2 cell averages (an explicit re-computation),
    a perfect prediction still gives 0 and a shift of 4 pixels (2 cells) costs more than one of 2."""
    labels, perfect = _scene(64)
    logits = perfect.roll(4, dims=-1)
    probs = F.avg_pool2d(logits.softmax(dim=1)[:, 1:], 2)
    dense = F.avg_pool2d(F.one_hot(labels, 3).movedim(-1, 1).float()[:, 1:], 2)
    net = _net()
    with torch.no_grad():
        # 32 x 32 after pooling: one tile per class
        norms = net(soft_boundary(probs).view(2, 1, 32, 32), soft_boundary(dense).view(2, 1, 32, 32)).norm(dim=1)
    expected = norms.mean()
    torch.testing.assert_close(inverseform_distance(logits, labels, downsample=2), expected.view(1))
    assert inverseform_distance(perfect, labels, downsample=2).item() < 1e-6
    assert inverseform_distance(perfect.roll(2, dims=-1), labels, downsample=2) < inverseform_distance(
        logits, labels, downsample=2
    )


def test_downsample_keeps_ignored_pixels_out() -> None:
    logits, labels, ignored = _random_case(3)
    logits, labels, ignored = (t.repeat_interleave(3, dim=-1) for t in (logits, labels, ignored))
    changed = logits.clone()
    mask = ignored.unsqueeze(1).expand_as(logits)
    changed[mask] = -logits[mask] + 5.0
    torch.testing.assert_close(inverseform_distance(changed, labels, ignore_index=255, downsample=2),
                               inverseform_distance(logits, labels, ignore_index=255, downsample=2))
