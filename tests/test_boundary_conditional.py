"""Conditional boundary loss (boundary.py): against a pixel-by-pixel numpy implementation of the formula
in its docstring (SPEC D.20), gradients through the features, the `features` argument's errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from seglosses import ConditionalBoundaryLoss, CrossEntropyLoss, create_loss
from seglosses.boundary import conditional_boundary_loss


def oracle(logits, labels, features, *, weight=1.0, temperature=0.1, window=3, ignore_index=None, binary=False):
    """(B,) CE + weight * mean over anchors of (A2C + A2PN), by loops over images, pixels and neighbours."""
    logits, labels, features = logits.numpy(), labels.numpy(), features.numpy()
    radius = window // 2
    losses = []
    for image in range(logits.shape[0]):
        z, y, f = logits[image], labels[image], features[image]
        f = f / np.maximum(np.linalg.norm(f, axis=0, keepdims=True), 1e-12)
        valid = np.ones(y.shape, bool) if ignore_index is None else y != ignore_index
        if binary:
            p = 1 / (1 + np.exp(-z[0]))
            ce_map = -(y * np.log(p) + (1 - y) * np.log(1 - p))
            predicted = (z[0] > 0).astype(int)
        else:
            shifted = z - z.max(axis=0, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))
            ce_map = -np.take_along_axis(log_p, np.where(valid, y, 0)[None], axis=0)[0]
            predicted = z.argmax(axis=0)
        cross_entropy = ce_map[valid].sum() / max(valid.sum(), 1)
        correct = (predicted == y) & valid
        terms = []
        for position in itertools.product(*(range(n) for n in y.shape)):
            if not valid[position]:
                continue
            positives, negatives, boundary = [], [], False
            for offset in itertools.product(range(-radius, radius + 1), repeat=y.ndim):
                neighbour = tuple(p + o for p, o in zip(position, offset, strict=True))
                if not any(offset) or not all(0 <= q < n for q, n in zip(neighbour, y.shape, strict=True)):
                    continue
                if not valid[neighbour]:
                    continue
                same = y[neighbour] == y[position]
                boundary |= not same
                if correct[neighbour]:
                    (positives if same else negatives).append(f[(slice(None), *neighbour)])
            if not boundary or not positives:
                continue
            anchor = f[(slice(None), *position)]
            a2c = ((anchor - np.mean(positives, axis=0)) ** 2).sum()
            negative_sum = sum(math.exp(anchor @ n / temperature) for n in negatives)
            a2pn = np.mean([-math.log(math.exp(anchor @ q / temperature)
                                      / (math.exp(anchor @ q / temperature) + negative_sum)) for q in positives])
            terms.append(a2c + a2pn)
        losses.append(cross_entropy + weight * (np.mean(terms) if terms else 0.0))
    return torch.tensor(losses, dtype=torch.float64)


def inputs(shape, classes, channels=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(shape, dtype=torch.long)
    labels[:, 1:-1, : shape[2] // 2] = 1 % classes
    labels[:, shape[1] // 2 :, shape[2] // 3 :] = (classes - 1)
    logits = 2.0 * torch.randn(shape[0], classes, *shape[1:], generator=generator, dtype=torch.float64)
    logits = logits + 2.5 * torch.nn.functional.one_hot(labels, classes).movedim(-1, 1)  # mostly right
    features = torch.randn(shape[0], channels, *shape[1:], generator=generator, dtype=torch.float64)
    return logits, labels, features


@pytest.mark.parametrize(
    "shape, classes, options",
    [((2, 7, 8), 3, {}), ((2, 7, 8), 3, dict(window=5, temperature=0.5, weight=0.3)), ((1, 4, 5, 6), 3, {})],
    ids=["2d", "2d-window5", "3d"],
)
def test_matches_the_loop_oracle(shape, classes, options):
    logits, labels, features = inputs(shape, classes, seed=len(shape))
    value = conditional_boundary_loss(logits, labels, features=features, reduction="none", **options)
    torch.testing.assert_close(value, oracle(logits, labels, features, **options))
    assert (value > CrossEntropyLoss(reduction="none")(logits, labels) + 1e-3).all()  # anchors exist


def test_binary_and_ignored_pixels_match_the_oracle():
    logits, labels, features = inputs((2, 8, 9), 2, seed=3)
    binary_logits = logits[:, 1:] - logits[:, :1]
    value = conditional_boundary_loss(binary_logits, labels, features=features, reduction="none")
    torch.testing.assert_close(value, oracle(binary_logits, labels, features, binary=True))
    ignored = labels.clone()
    ignored[0, 2:5, 3:6] = 255
    ignored[1, :, 0] = 255
    value = conditional_boundary_loss(logits, ignored, features=features, ignore_index=255, reduction="none")
    torch.testing.assert_close(value, oracle(logits, ignored, features, ignore_index=255))


def test_gradients_reach_the_features_and_match_finite_differences():
    logits, labels, features = inputs((1, 6, 7), 3, channels=3, seed=4)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda f: conditional_boundary_loss(logits, labels, features=f), (features,), eps=1e-6, atol=1e-5, rtol=1e-3
    )


def test_separated_features_score_lower_and_weight_zero_is_cross_entropy():
    logits, labels, features = inputs((2, 8, 8), 3, seed=5)
    separated = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double()
    loss = ConditionalBoundaryLoss(reduction="none")
    assert (loss(logits, labels, features=separated) < loss(logits, labels, features=features)).all()
    torch.testing.assert_close(
        ConditionalBoundaryLoss(weight=0.0)(logits, labels, features=features), CrossEntropyLoss()(logits, labels)
    )
    uniform = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    uniform_labels = torch.ones(2, 8, 8, dtype=torch.long)  # no boundary: plain CE
    torch.testing.assert_close(loss(logits, uniform_labels, features=uniform),
                               CrossEntropyLoss(reduction="none")(logits, uniform_labels))


def test_features_are_required_and_checked():
    logits, labels, features = inputs((2, 6, 6), 3, seed=6)
    loss = ConditionalBoundaryLoss()
    with pytest.raises(TypeError, match=r"^Expected `features` to be the decoder features.*features=\.\.\..*got None"):
        loss(logits, labels)
    with pytest.raises(TypeError, match="^Expected `features` to be"):
        loss(logits, labels, features=features.long())
    with pytest.raises(ValueError, match=r"^Expected `features` to be of shape \(2, F, 6, 6\)"):
        loss(logits, labels, features=features[..., :5])
    with pytest.raises(ValueError, match="^Expected `logits` to be"):  # the logits are checked first
        loss(logits[:, :, 0], labels, features=features)
    with pytest.raises(TypeError, match="ConditionalBoundaryLoss"):
        loss.per_pixel(logits, labels, features=features)
    torch.testing.assert_close(loss.per_image(logits, labels, features=features).mean(),
                               loss(logits, labels, features=features))


@pytest.mark.parametrize(
    "options, argument",
    [(dict(window=4), "window"), (dict(window=1), "window"), (dict(temperature=0.0), "temperature"),
     (dict(weight=-1.0), "weight"), (dict(mode="multilabel"), "mode")],
)
def test_bad_options_are_refused(options, argument):
    with pytest.raises((TypeError, ValueError), match=f"^Expected `{argument}` to be"):
        create_loss("conditional_boundary", **options)
