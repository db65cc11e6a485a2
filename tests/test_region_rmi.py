"""RMI (region.py) against a direct numpy implementation of SPEC D.13 / the reference's formula, with
explicit loops over images, classes, positions and neighbourhood offsets."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from seglosses import RMILoss, create_loss
from seglosses.region import rmi_loss


def _average_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Average pooling of one map, kernel = stride = size, zero padding size // 2 counted in the mean."""
    if size == 1:
        return x
    pad = size // 2
    padded = np.pad(x, pad)
    out_shape = [(n + 2 * pad - size) // size + 1 for n in x.shape]
    out = np.zeros(out_shape)
    for index in itertools.product(*(range(n) for n in out_shape)):
        window = tuple(slice(i * size, i * size + size) for i in index)
        out[index] = padded[window].sum() / size ** x.ndim
    return out


def _vectors(x: np.ndarray, radius: int) -> np.ndarray:
    """(d, N): one column per position whose radius-neighbourhood fits, offsets in row-major order."""
    positions = itertools.product(*(range(n - radius + 1) for n in x.shape))
    columns = []
    for position in positions:
        columns.append([x[tuple(p + o for p, o in zip(position, offset, strict=True))]
                        for offset in itertools.product(range(radius), repeat=x.ndim)])
    return np.array(columns).T


def oracle(logits, dense, valid, *, radius=3, downsample=4, bce_weight=0.5, eps=5e-4):
    """(B,) losses: lambda * per-image mean of the class-summed BCE + (1 - lambda) * class-summed RMI."""
    logits, dense, valid = (np.asarray(t, dtype=np.float64) for t in (logits, dense, valid))
    losses = []
    for image in range(logits.shape[0]):
        bce_total, rmi_total = 0.0, 0.0
        for c in range(logits.shape[1]):
            z, y, v = logits[image, c], dense[image, c] * valid[image], valid[image]
            p = 1.0 / (1.0 + np.exp(-z))
            bce_total += (v * -(y * np.log(p) + (1 - y) * np.log(1 - p))).sum()
            labels = _average_pool(y, downsample)
            probs = _average_pool(p * v + 1e-6, downsample)
            la, pr = _vectors(labels, radius), _vectors(probs, radius)
            la = la - la.mean(axis=1, keepdims=True)
            pr = pr - pr.mean(axis=1, keepdims=True)
            d = la.shape[0]
            identity = np.eye(d)
            conditional = la @ la.T - (la @ pr.T) @ np.linalg.inv(pr @ pr.T + eps * identity) @ (pr @ la.T)
            sign, log_det = np.linalg.slogdet(conditional + eps * identity)
            assert sign > 0
            rmi_total += 0.5 * log_det / d
        losses.append(bce_weight * bce_total / max(valid[image].sum(), 1.0) + (1 - bce_weight) * rmi_total)
    return torch.tensor(losses, dtype=torch.float64)


def _inputs(shape, classes, seed, blobs=True):
    generator = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(shape[0], classes, *shape[1:], generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, shape, generator=generator)
    if blobs:  # coherent regions, so the neighbourhoods carry structure
        labels = torch.zeros(shape, dtype=torch.long)
        labels[:, 2:-3] = 1
        labels[..., 1:4] = classes - 1
    return logits, labels


@pytest.mark.parametrize(
    "shape, downsample, radius",
    [((2, 9, 10), 2, 3), ((2, 16, 16), 4, 3), ((1, 7, 8), 1, 2), ((1, 6, 7, 8), 2, 3), ((1, 5, 5, 6), 1, 2)],
    ids=["2d-pool2", "2d-pool4", "2d-nopool-r2", "3d-pool2", "3d-nopool-r2"],
)
def test_matches_the_loop_oracle(shape, downsample, radius):
    logits, labels = _inputs(shape, 3, seed=len(shape) + downsample)
    dense = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double()
    value = rmi_loss(logits, labels, radius=radius, downsample=downsample, reduction="none")
    expected = oracle(logits, dense, torch.ones(shape), radius=radius, downsample=downsample)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)


def test_matches_the_oracle_with_ignored_pixels_and_another_weight():
    logits, labels = _inputs((2, 12, 12), 3, seed=3)
    ignored = torch.zeros(2, 12, 12, dtype=torch.bool)
    ignored[0, :3, :5] = True
    ignored[1, 7:, 8:] = True
    target = labels.masked_fill(ignored, 255)
    value = rmi_loss(logits, target, ignore_index=255, downsample=2, bce_weight=0.3, reduction="none")
    dense = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double()
    expected = oracle(logits, dense, (~ignored).double(), downsample=2, bce_weight=0.3)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)


def test_binary_and_multilabel_modes_match_the_oracle():
    logits, labels = _inputs((2, 10, 11), 2, seed=4)
    binary = rmi_loss(logits[:, 1:], labels, downsample=2, reduction="none")
    torch.testing.assert_close(binary, oracle(logits[:, 1:], labels.unsqueeze(1).double(), torch.ones(2, 10, 11),
                                              downsample=2))
    multi_hot = torch.stack([labels == 1, labels > 0], dim=1).double()
    multilabel = rmi_loss(logits, multi_hot, mode="multilabel", downsample=2, reduction="none")
    torch.testing.assert_close(multilabel, oracle(logits, multi_hot, torch.ones(2, 10, 11), downsample=2))


def test_perfect_prediction_has_lower_rmi_than_random_and_finite_gradients():
    _, labels = _inputs((2, 24, 24), 3, seed=5)
    dense = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double()
    perfect = (12.0 * (2.0 * dense - 1.0)).requires_grad_(True)
    random = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    rmi_only = RMILoss(bce_weight=0.0, reduction="none")
    assert (rmi_only(perfect, labels) < rmi_only(random, labels) - 1.0).all()
    # at a perfect prediction the conditional covariance is about eps * I: RMI per class ~ 0.5 * log(eps) at most
    assert (rmi_only(perfect, labels) < 3 * 0.5 * math.log(2 * 5e-4) + 0.1).all()
    value = RMILoss()(perfect, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(perfect.grad).all()


def test_gradient_matches_finite_differences_in_3d():
    logits, labels = _inputs((1, 5, 5, 6), 2, seed=7)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: rmi_loss(z, labels, downsample=1), (logits,), eps=1e-6, atol=1e-5,
                                    rtol=1e-3, fast_mode=True)


def test_all_background_and_float32_inputs_are_finite():
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    value = rmi_loss(logits, labels)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_too_small_input_names_logits_and_the_fix():
    with pytest.raises(ValueError, match=r"^Expected `logits` to be at least 3 positions.*lower `downsample`"):
        rmi_loss(torch.zeros(1, 2, 6, 6), torch.zeros(1, 6, 6, dtype=torch.long))
    assert torch.isfinite(rmi_loss(torch.zeros(1, 2, 6, 6), torch.zeros(1, 6, 6, dtype=torch.long), downsample=1))


@pytest.mark.parametrize(
    "options, argument",
    [(dict(radius=0), "radius"), (dict(radius=2.0), "radius"), (dict(downsample=0), "downsample"),
     (dict(bce_weight=1.5), "bce_weight"), (dict(eps=0.0), "eps")],
)
def test_bad_options_are_refused_at_construction(options, argument):
    with pytest.raises((TypeError, ValueError), match=f"^Expected `{argument}` to be"):
        create_loss("rmi", **options)


def reference_forward_sigmoid(logits, labels, num_classes, pool=4, radius=3, weight_lambda=0.5, ignore=255):
    """ZJULearning/RMI's RMILoss.forward_sigmoid with rmi_pool_way=1 (avg), transcribed to CPU float64."""
    label_mask = labels < num_classes
    onehot = torch.nn.functional.one_hot(labels.long() * label_mask.long(), num_classes).double()
    label_mask = label_mask.double()
    onehot = onehot * label_mask.unsqueeze(3)
    logits_flat = logits.permute(0, 2, 3, 1).reshape(-1, num_classes)
    binary = torch.nn.functional.binary_cross_entropy_with_logits(
        logits_flat, onehot.view(-1, num_classes), weight=label_mask.view(-1, 1), reduction="sum")
    bce = binary / (label_mask.sum() + 1.0)
    probs = logits.sigmoid() * label_mask.unsqueeze(1) + 1e-6
    labels4 = onehot.permute(0, 3, 1, 2)
    labels4 = torch.nn.functional.avg_pool2d(labels4, pool, pool, pool // 2)
    probs = torch.nn.functional.avg_pool2d(probs, pool, pool, pool // 2)
    n, c, h, w = labels4.shape
    new_h, new_w = h - (radius - 1), w - (radius - 1)
    la = torch.stack([labels4[:, :, y:y + new_h, x:x + new_w] for y in range(radius) for x in range(radius)], 2)
    pr = torch.stack([probs[:, :, y:y + new_h, x:x + new_w] for y in range(radius) for x in range(radius)], 2)
    half_d = radius * radius
    la, pr = la.reshape(n, c, half_d, -1), pr.reshape(n, c, half_d, -1)
    eye = torch.eye(half_d, dtype=torch.float64)
    la, pr = la - la.mean(dim=3, keepdim=True), pr - pr.mean(dim=3, keepdim=True)
    la_cov, pr_cov, la_pr = la @ la.transpose(2, 3), pr @ pr.transpose(2, 3), la @ pr.transpose(2, 3)
    appro = la_cov - la_pr @ torch.inverse(pr_cov + eye * 5e-4) @ la_pr.transpose(-2, -1)
    chol = torch.linalg.cholesky(appro + eye * 5e-4)
    rmi_now = 0.5 * 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1) + 1e-8).sum(dim=-1)
    rmi = (rmi_now.view(-1, num_classes).mean(dim=0) / half_d).sum()
    return weight_lambda * bce + (1 - weight_lambda) * rmi, bce


def test_equals_the_reference_code_up_to_its_plus_one_pixel():
    """The reference divides the batch's BCE sum by (counted pixels + 1); with equal counts per image the
    library's batch mean is the reference value with that +1 removed, and nothing else differs."""
    logits, labels = _inputs((2, 20, 23), 4, seed=8)
    target = labels.clone()
    target[:, :2, :3] = 255  # the same number of ignored pixels in both images
    reference, reference_bce = reference_forward_sigmoid(logits, target, 4)
    counted = float((target != 255).sum())
    expected = reference + 0.5 * reference_bce * (counted + 1.0) / counted - 0.5 * reference_bce
    torch.testing.assert_close(rmi_loss(logits, target, ignore_index=255), expected, rtol=1e-9, atol=1e-9)
