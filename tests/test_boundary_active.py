"""Active boundary loss (boundary.py) against a pixel-by-pixel numpy transcription of the reference
algorithm (wangchi95/active-boundary-loss, one image at a time), hand-derived values and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from seglosses import ActiveBoundaryLoss, create_loss
from seglosses.boundary import ACTIVE_BOUNDARY_OFFSETS, active_boundary_loss


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=0, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))


def _kl_of(logits: np.ndarray):
    log_p = _log_softmax(logits)

    def kl(first, second):  # KL(p_first || p_second), both (row, column)
        a, b = log_p[:, first[0], first[1]], log_p[:, second[0], second[1]]
        return float((np.exp(a) * (a - b)).sum())

    return kl


def reference_centres(logits: np.ndarray, max_ratio: float) -> np.ndarray:
    """The reference's predicted boundary of one (C, H, W) image: literal threshold loop, 3x3 dilation."""
    _, height, width = logits.shape
    kl = _kl_of(logits)
    combined = np.zeros((height, width))
    for i in range(height):
        for j in range(width):
            if i + 1 < height:
                combined[i, j] += kl((i, j), (i + 1, j))
            if j + 1 < width:
                combined[i, j] += kl((i, j), (i, j + 1))
    eps = 1e-5
    while (combined > eps).sum() > height * width * max_ratio:
        eps *= 1.2
    edges = combined > eps
    centres = np.zeros_like(edges)
    for i in range(height):
        for j in range(width):
            centres[i, j] = edges[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].any()
    return centres


def reference_one_image(logits: np.ndarray, labels: np.ndarray, max_ratio: float, smoothing=0.2, clip=20.0) -> float:
    """The reference's ABL for one (C, H, W) image: scipy distances, loops over pixels."""
    _, height, width = logits.shape
    kl = _kl_of(logits)
    centres = reference_centres(logits, max_ratio)

    boundary = np.zeros((height, width), dtype=bool)
    boundary[:-1] |= labels[:-1] != labels[1:]
    boundary[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    posmask, negmask = ~boundary, boundary
    signed = ndimage.distance_transform_edt(negmask) * negmask - (ndimage.distance_transform_edt(posmask) - 1) * posmask
    distance = np.maximum(-signed, 0.0)

    total, count = 0.0, 0
    for i in range(height):
        for j in range(width):
            if not centres[i, j]:
                continue
            candidates = []
            for dr, dc in (*ACTIVE_BOUNDARY_OFFSETS, (0, 0)):
                r, c = i + dr, j + dc
                candidates.append(distance[r, c] if 0 <= r < height and 0 <= c < width else 1e5)
            direction = int(np.argmin(candidates))  # the first minimum
            if direction == 8:
                continue
            direction_logits = np.array([
                kl((min(max(i + dr, 0), height - 1), min(max(j + dc, 0), width - 1)), (i, j))
                for dr, dc in ACTIVE_BOUNDARY_OFFSETS
            ])
            log_q = _log_softmax(direction_logits)
            target = np.full(8, smoothing / 8)
            target[direction] = 1.0 - smoothing
            total += -(target * log_q).sum() * min(distance[i, j], clip) / clip
            count += 1
    return total / count if count else 0.0


def blobs(batch: int, height: int, width: int, classes: int, seed: int) -> torch.Tensor:
    """Labels made of a few rectangles, so that boundaries are lines, not every pixel."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch, height, width, dtype=torch.long)
    for image in range(batch):
        for label in range(1, classes):
            top, left = (int(torch.randint(0, n // 2, (1,), generator=generator)) for n in (height, width))
            bottom = top + int(torch.randint(2, height - top, (1,), generator=generator))
            right = left + int(torch.randint(2, width - left, (1,), generator=generator))
            labels[image, top:bottom, left:right] = label
    return labels


def smooth_logits(labels: torch.Tensor, classes: int, seed: int, shift: int = 2) -> torch.Tensor:
    """Logits of a prediction shaped like the labels, shifted and noisy: its boundary is near, not on, the truth."""
    generator = torch.Generator().manual_seed(seed)
    one_hot = torch.nn.functional.one_hot(labels.roll(shift, dims=-1), classes).movedim(-1, 1).double()
    return 3.0 * one_hot + 0.7 * torch.randn(one_hot.shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("max_ratio", [0.01, 0.05, 0.3])
@pytest.mark.parametrize("classes", [2, 3])
def test_matches_the_reference_algorithm(classes, max_ratio):
    labels = blobs(3, 14, 17, classes, seed=classes)
    logits = smooth_logits(labels, classes, seed=10 * classes)
    value = active_boundary_loss(logits, labels, max_boundary_fraction=max_ratio, reduction="none")
    expected = [reference_one_image(logits[i].numpy(), labels[i].numpy(), max_ratio) for i in range(3)]
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64), rtol=1e-7, atol=1e-10)
    assert (value > 0).any()


def test_hand_derived_straight_boundary():
    """Truth: class 1 from column 3 of a 6x6 image (GT boundary = column 2, distance map max(d - 1, 0) =
    [1, 0, 0, 0, 1, 2] by column). Prediction: class 1 only in column 5, so the KL is non-zero only
    between columns 4 and 5: the predicted boundary is column 4, dilated to columns 3-5 (18 pixels).
    Every kept pixel's target is its left neighbour (index 2), closer to the GT boundary; columns 3, 4 and
    5 weigh 0, 1/20 and 2/20."""
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :, 3:] = 1
    logits = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    logits[0, 1, :, 5] = 3.0
    logits[0, 0, :, :5] = 3.0
    value = active_boundary_loss(logits, labels, max_boundary_fraction=0.2)

    log_p = torch.log_softmax(logits[0, :, 0], dim=0)  # one row: columns differ only at 5

    def kl(neighbour: int, centre: int) -> torch.Tensor:
        return (log_p[:, neighbour].exp() * (log_p[:, neighbour] - log_p[:, centre])).sum()

    def cross_entropy(column: int) -> torch.Tensor:
        # the 8 neighbours in ACTIVE_BOUNDARY_OFFSETS order: (down, up, left, right, up-right, down-right, ...)
        columns = [min(max(column + dc, 0), 5) for _, dc in ACTIVE_BOUNDARY_OFFSETS]
        log_q = torch.stack([kl(c, column) for c in columns]).log_softmax(dim=0)
        target = torch.full((8,), 0.2 / 8, dtype=torch.float64)
        target[2] = 0.8
        return -(target * log_q).sum()

    expected = 6 * (cross_entropy(4) * 1 / 20 + cross_entropy(5) * 2 / 20) / 18
    torch.testing.assert_close(value, expected)


def test_binary_equals_multiclass_with_a_zero_channel():
    labels = blobs(2, 12, 12, 2, seed=3)
    logits = smooth_logits(labels, 2, seed=4)
    z = logits[:, 1:] - logits[:, :1]
    torch.testing.assert_close(
        active_boundary_loss(z, labels, max_boundary_fraction=0.1, reduction="none"),
        active_boundary_loss(torch.cat([torch.zeros_like(z), z], dim=1), labels, max_boundary_fraction=0.1,
                             reduction="none"),
    )


def test_no_predicted_or_true_boundary_gives_zero_with_a_graph():
    labels = blobs(2, 10, 10, 3, seed=5)
    uniform = torch.zeros(2, 3, 10, 10, requires_grad=True)  # no predicted boundary anywhere
    value = active_boundary_loss(uniform, labels)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert (uniform.grad == 0).all()
    noisy = torch.randn(2, 3, 10, 10, requires_grad=True)  # a predicted boundary, but no true one
    value = ActiveBoundaryLoss(max_boundary_fraction=0.2)(noisy, torch.zeros(2, 10, 10, dtype=torch.long))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.isfinite(noisy.grad).all()


def test_gradient_descent_moves_the_predicted_boundary_toward_the_truth():
    labels = torch.zeros(1, 12, 12, dtype=torch.long)
    labels[0, :, 6:] = 1
    columns = torch.arange(12, dtype=torch.float64)
    logits = torch.stack([4.0 - columns, columns - 4.0]).unsqueeze(0).unsqueeze(2).expand(1, 2, 12, 12)
    logits = logits.clone().requires_grad_(True)  # predicted boundary at column 4, truth at 5/6
    optimiser = torch.optim.SGD([logits], lr=5.0)
    first = None
    for _ in range(30):
        loss = active_boundary_loss(logits, labels, max_boundary_fraction=0.2)
        first = loss.item() if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    crossing = (logits[0, 1, 6] > logits[0, 0, 6]).double().argmax().item()  # first column predicted class 1
    assert loss.item() < first
    assert crossing > 4


def test_ignored_pixels_change_nothing_and_count_as_boundary():
    labels = blobs(1, 12, 12, 3, seed=6)
    logits = smooth_logits(labels, 3, seed=7)
    target = labels.clone()
    target[0, 6:8, 10:12] = 255
    changed = logits.clone()
    changed[..., 6:8, 10:12] = 10 * torch.randn(1, 3, 2, 2, dtype=torch.float64)
    loss = ActiveBoundaryLoss(ignore_index=255, max_boundary_fraction=0.1)
    torch.testing.assert_close(loss(changed, target), loss(logits, target))
    assert loss(logits, target) != loss(logits, labels)  # the ignored pixels are boundary and no centres


def test_three_d_and_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"^Expected `logits` to be of shape \(B, C, H, W\): .*2D only"):
        active_boundary_loss(torch.zeros(1, 2, 4, 5, 6), torch.zeros(1, 4, 5, 6, dtype=torch.long))
    for options, argument in [(dict(max_boundary_fraction=1.5), "max_boundary_fraction"),
                              (dict(label_smoothing=-0.1), "label_smoothing"), (dict(max_distance=0), "max_distance"),
                              (dict(cache_target_maps="yes"), "cache_target_maps"), (dict(backend="gpu"), "backend")]:
        with pytest.raises((TypeError, ValueError), match=f"^Expected `{argument}` to be"):
            create_loss("active_boundary", **options)


def test_cached_target_maps_give_the_same_value_and_float32_stays_float32():
    labels = blobs(2, 16, 16, 3, seed=8)
    logits = smooth_logits(labels, 3, seed=9).float()
    cached = ActiveBoundaryLoss(cache_target_maps=True, max_boundary_fraction=0.05)
    plain = ActiveBoundaryLoss(max_boundary_fraction=0.05)
    for _ in range(2):
        torch.testing.assert_close(cached(logits, labels), plain(logits, labels))
    assert cached.options["cache"].hits == 2 and plain(logits, labels).dtype == torch.float32
    assert math.isfinite(plain(logits, labels).item())


def test_detached_neighbours_move_only_the_kept_pixels_and_undetached_is_exact():
    labels = blobs(1, 10, 11, 3, seed=11)
    logits = smooth_logits(labels, 3, seed=12).requires_grad_(True)
    value = active_boundary_loss(logits, labels, max_boundary_fraction=0.05)
    (grad,) = torch.autograd.grad(value, logits)
    centres = torch.from_numpy(reference_centres(logits[0].detach().numpy(), 0.05)).unsqueeze(0)
    assert (grad.abs().sum(dim=1)[~centres] == 0).all() and (grad.abs().sum(dim=1)[centres] > 0).any()
    assert torch.autograd.gradcheck(
        lambda z: active_boundary_loss(z, labels, max_boundary_fraction=0.05, detach_neighbours=False),
        (logits,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True,
    )
