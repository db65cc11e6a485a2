"""Region losses against independent oracles: MONAI (Dice, generalised Dice, Tversky), kornia (Lovasz
softmax and hinge, Dice), naive references written here (Berman's Lovasz with loops and a full sort, MCC
and sensitivity-specificity from their definitions), hand-derived tiny cases, and the places where an
oracle is known to be wrong.

The generic contract (defaults in every mode, 2D and 3D, gradcheck, ignore_index, autocast, ...) is
checked over the registry in test_harness.py; here the non-default options are exercised as well.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from seglosses import create_loss
from seglosses.region import (
    DiceLoss,
    FocalTverskyLoss,
    TverskyLoss,
    _descending_order,
    dice_loss,
    dice_loss_per_pixel,
    focal_tversky_loss,
    generalized_dice_loss,
    generalized_dice_loss_per_pixel,
    jaccard_loss,
    jaccard_loss_per_pixel,
    log_cosh_dice_loss,
    lovasz_loss,
    mcc_loss,
    sensitivity_specificity_loss,
    sensitivity_specificity_loss_per_pixel,
    tversky_loss,
    tversky_loss_per_pixel,
)

IGNORE = 255
SHAPES = {"2d": (3, 4, 6, 7), "3d": (2, 4, 3, 4, 5)}
shapes = pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))


def random_inputs(shape, device, seed=0, dtype=torch.float64, scale=2.0):
    """Logits (B, C, *S) and labels (B, *S) in [0, C) (in {0, 1} for a single channel)."""
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, max(shape[1], 2), (shape[0], *shape[2:]), generator=generator)
    return logits.to(device, dtype), labels.to(device)


def random_dense(shape, device, seed=1):
    """A 0/1 multilabel target (B, C, *S)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=generator).to(device, torch.float64)


def one_hot(labels, num_classes):
    return F.one_hot(labels, num_classes).movedim(-1, 1).double()


def ignore_some(labels, seed=5, fraction=0.3):
    """Labels with about ``fraction`` of the pixels set to IGNORE, and the (B, *S) ignored mask."""
    generator = torch.Generator().manual_seed(seed)
    ignored = (torch.rand(labels.shape, generator=generator) < fraction).to(labels.device)
    return labels.masked_fill(ignored, IGNORE), ignored


def grad_of(function, logits):
    logits = logits.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(function(logits), logits)
    return grad


def counted_mean(per_pixel, ignored):
    """Mean of a (B, *S) map over each image's counted pixels, (B,)."""
    dims = tuple(range(1, per_pixel.ndim))
    return per_pixel.sum(dim=dims) / (~ignored).sum(dim=dims)


# --------------------------------------------------------------------------- Dice (MONAI, kornia)


class TestDice:
    @shapes
    @pytest.mark.parametrize("squared", [True, False])
    @pytest.mark.parametrize("batch", [False, True])
    def test_matches_monai(self, shape, squared, batch, device):
        monai = pytest.importorskip("monai.losses")
        logits, labels = random_inputs(shape, device)
        oracle = monai.DiceLoss(softmax=True, squared_pred=squared, batch=batch, smooth_nr=1e-5, smooth_dr=1e-5)
        expected = oracle(logits, one_hot(labels, shape[1]))
        torch.testing.assert_close(dice_loss(logits, labels, squared=squared, batch=batch), expected)

    def test_matches_monai_without_background(self, device):
        monai = pytest.importorskip("monai.losses")
        logits, labels = random_inputs(SHAPES["2d"], device)
        oracle = monai.DiceLoss(softmax=True, squared_pred=True, include_background=False)
        expected = oracle(logits, one_hot(labels, 4))
        torch.testing.assert_close(dice_loss(logits, labels, include_background=False), expected)

    def test_kornia_default_dice_is_one_minus_mean_true_class_probability(self, device):
        """Oracle defect (SPEC): kornia's default ("micro") Dice pools every class into one ratio whose
        denominator is 2P for softmax outputs, so it is 1 - mean p(true class), not a Dice loss."""
        kornia = pytest.importorskip("kornia")
        logits, labels = random_inputs((2, 4, 6, 7), device)
        true_class_probability = logits.softmax(dim=1).gather(1, labels.unsqueeze(1)).mean()
        kornia_default = kornia.losses.dice_loss(logits, labels)
        torch.testing.assert_close(kornia_default, 1.0 - true_class_probability)
        # So missing a small structure entirely costs only its pixel fraction, where a Dice loss costs 1/C.
        labels = torch.zeros((1, 6, 7), dtype=torch.long, device=device)
        labels[0, 0, :2] = 1
        misses_class_1 = torch.zeros((1, 2, 6, 7), dtype=torch.float64, device=device)
        misses_class_1[:, 0] = 20.0
        assert kornia.losses.dice_loss(misses_class_1, labels).item() == pytest.approx(2 / 42, rel=1e-6)
        assert dice_loss(misses_class_1, labels, squared=False).item() == pytest.approx(0.5, abs=0.02)
        logits, labels = random_inputs((2, 4, 6, 7), device)
        # kornia's "macro" Dice is the per-class linear Dice (averaged over present classes; all are here).
        assert (one_hot(labels, 4).sum(dim=(2, 3)) > 0).all()
        macro = kornia.losses.dice_loss(logits, labels, average="macro", eps=1e-12)
        torch.testing.assert_close(macro, dice_loss(logits, labels, squared=False, eps=1e-12))

    def test_smp_dice_gives_zero_loss_on_empty_target_with_false_positives(self, device):
        """Oracle defect (SPEC): segmentation_models_pytorch zeroes the Dice loss of a class absent from the
        target, so a prediction full of false positives on an empty target costs nothing."""
        smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
        logits = torch.full((2, 1, 4, 4), 10.0, dtype=torch.float64, device=device)
        empty = torch.zeros((2, 4, 4), dtype=torch.long, device=device)
        assert smp_losses.DiceLoss(mode="binary")(logits, empty).item() == 0.0
        assert dice_loss(logits, empty).item() > 0.9


# --------------------------------------------------------------------------- log-cosh Dice


class TestLogCoshDice:
    @pytest.mark.parametrize("options", [{}, {"squared": False}, {"include_background": False},
                                         {"class_weights": [0.5, 1.0, 2.0, 0.0]}])
    def test_is_log_cosh_of_each_image_dice(self, options, device):
        logits, labels = random_inputs(SHAPES["2d"], device)
        dice = dice_loss(logits, labels, **options, reduction="none")
        expected = torch.log((torch.exp(dice) + torch.exp(-dice)) / 2)
        torch.testing.assert_close(log_cosh_dice_loss(logits, labels, **options, reduction="none"), expected)

    def test_batch_mode_gives_every_image_log_cosh_of_the_batch_dice(self, device):
        logits, labels = random_inputs(SHAPES["3d"], device)
        batch_dice = dice_loss(logits, labels, batch=True)
        per_image = log_cosh_dice_loss(logits, labels, batch=True, reduction="none")
        torch.testing.assert_close(per_image, torch.log(torch.cosh(batch_dice)).expand(2))

    def test_survey_cosh_is_sinh(self, device):
        """Oracle defect (SPEC D.6): the survey's cosh, (e^x - e^-x)/2, is sinh: its log is -inf at a perfect
        prediction (Dice loss 0) and negative below asinh(1) = 0.88, so it is no loss. The true log cosh is
        0 at 0 and close to x^2/2."""
        survey_log_cosh = lambda x: math.log((math.exp(x) - math.exp(-x)) / 2)  # noqa: E731
        assert survey_log_cosh(0.5) < 0 and survey_log_cosh(0.5) == pytest.approx(math.log(math.sinh(0.5)))
        with pytest.raises(ValueError):
            survey_log_cosh(0.0)
        labels = torch.tensor([[[0, 1], [1, 0]]], device=device)
        perfect = 30.0 * one_hot(labels, 2)
        assert log_cosh_dice_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-12)
        assert math.log(math.cosh(0.5)) == pytest.approx(0.5**2 / 2, rel=0.05)


# --------------------------------------------------------------------------- generalised Dice (MONAI)


def labels_with_absent_classes(shape, device):
    """Labels where image 0 lacks the last class and image 1 holds only class 0."""
    _, labels = random_inputs(shape, device)
    labels[0] = labels[0].clamp_max(shape[1] - 2)
    labels[1] = 0
    return labels


class TestGeneralizedDice:
    @shapes
    @pytest.mark.parametrize("w_type", ["square", "simple", "uniform"])
    @pytest.mark.parametrize("batch", [False, True])
    def test_matches_monai_multiclass(self, shape, w_type, batch, device):
        monai = pytest.importorskip("monai.losses")
        logits, _ = random_inputs(shape, device)
        labels = labels_with_absent_classes(shape, device)
        oracle = monai.GeneralizedDiceLoss(softmax=True, w_type=w_type, batch=batch, reduction="none")
        expected = oracle(logits, one_hot(labels, shape[1])).reshape(-1)
        got = generalized_dice_loss(logits, labels, w_type=w_type, batch=batch, reduction="none")
        if batch:  # MONAI returns the batch loss; ours gives each image its share
            got = got.mean(dim=0, keepdim=True)
        # MONAI computes the weights in float32.
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)

    def test_matches_monai_without_background(self, device):
        monai = pytest.importorskip("monai.losses")
        logits, labels = random_inputs(SHAPES["2d"], device)
        oracle = monai.GeneralizedDiceLoss(softmax=True, include_background=False)
        expected = oracle(logits, one_hot(labels, 4))
        torch.testing.assert_close(generalized_dice_loss(logits, labels, include_background=False), expected,
                                   rtol=1e-5, atol=1e-7)

    @pytest.mark.parametrize("mode", ["binary", "multilabel"])
    def test_sigmoid_modes_are_monai_on_channels_and_complements(self, mode, device):
        monai = pytest.importorskip("monai.losses")
        shape = (3, 1, 5, 6) if mode == "binary" else (3, 3, 5, 6)
        logits, labels = random_inputs(shape, device)
        target = labels.unsqueeze(1).double() if mode == "binary" else random_dense(shape, device)
        target[0] = 0.0  # an empty foreground
        probs = logits.sigmoid()
        expected = monai.GeneralizedDiceLoss()(torch.cat([probs, 1 - probs], 1), torch.cat([target, 1 - target], 1))
        torch.testing.assert_close(generalized_dice_loss(logits, target, mode=mode), expected, rtol=1e-5, atol=1e-7)

    def test_monai_sigmoid_gdl_ignores_false_positives_on_an_empty_target(self, device):
        """Oracle defect: with ``sigmoid=True`` MONAI's classes are the channels alone; an image with no
        foreground has only infinite weights, which its rule replaces by their maximum finite value, 0, so
        every prediction costs 0. Ours adds the complement (background) class, as in Sudre's binary GDL."""
        monai = pytest.importorskip("monai.losses")
        logits = torch.full((1, 1, 4, 4), 10.0, dtype=torch.float64, device=device)
        empty = torch.zeros_like(logits)
        assert monai.GeneralizedDiceLoss(sigmoid=True)(logits, empty).item() == 0.0
        assert generalized_dice_loss(logits, empty).item() > 0.9

    def test_hand_derived_uniform_weights(self, device):
        # Two pixels, two classes, softmax probabilities of the true class 3/4 and 1/2. With uniform weights the
        # denominator is sum p + sum t = 2 + 2, so L = 1 - (2 (3/4 + 1/2) + eps) / (4 + eps).
        logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]], dtype=torch.float64, device=device)
        labels = torch.tensor([[[1, 0]]], device=device)
        eps = 1e-5
        expected = 1 - (2 * 1.25 + eps) / (4 + eps)
        assert generalized_dice_loss(logits, labels, w_type="uniform").item() == pytest.approx(expected, rel=1e-12)
        # Square weights: class 0 and class 1 each have volume 1, so the weights are equal and cancel.
        assert generalized_dice_loss(logits, labels).item() == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- IoU


class TestJaccard:
    def test_hand_derived_binary(self, device):
        # p = sigmoid(z) = (3/4, 1/4), t = (1, 0): TP = 3/4, union = sum(p + t - pt) = 1 + 1 + 1 - 3/4.
        logits = torch.tensor([[[[math.log(3.0), -math.log(3.0)]]]], dtype=torch.float64, device=device)
        labels = torch.tensor([[[1, 0]]], device=device)
        eps = 1e-5
        expected = 1 - (0.75 + eps) / (1.25 + eps)
        assert jaccard_loss(logits, labels).item() == pytest.approx(expected, rel=1e-12)
        assert create_loss("iou")(logits, labels).item() == pytest.approx(expected, rel=1e-12)

    @shapes
    @pytest.mark.parametrize("batch", [False, True])
    def test_matches_monai_jaccard(self, shape, batch, device):
        # MONAI's jaccard=True is 1 - (2I + s_nr) / (2U + s_dr): ours with eps = s / 2.
        monai = pytest.importorskip("monai.losses")
        logits, labels = random_inputs(shape, device)
        oracle = monai.DiceLoss(softmax=True, jaccard=True, batch=batch, smooth_nr=2e-5, smooth_dr=2e-5)
        torch.testing.assert_close(jaccard_loss(logits, labels, batch=batch), oracle(logits, one_hot(labels, shape[1])))

    def test_is_tversky_with_unit_weights(self, device):
        logits, labels = random_inputs(SHAPES["3d"], device)
        torch.testing.assert_close(jaccard_loss(logits, labels), tversky_loss(logits, labels, fp_weight=1, fn_weight=1))


# --------------------------------------------------------------------------- Tversky and focal Tversky


class TestTversky:
    @shapes
    @pytest.mark.parametrize("batch", [False, True])
    def test_matches_monai_multiclass(self, shape, batch, device):
        monai = pytest.importorskip("monai.losses")
        logits, labels = random_inputs(shape, device)
        oracle = monai.TverskyLoss(softmax=True, alpha=0.3, beta=0.7, batch=batch)  # alpha weighs FP, beta FN
        torch.testing.assert_close(tversky_loss(logits, labels, batch=batch), oracle(logits, one_hot(labels, shape[1])))

    @pytest.mark.parametrize("mode", ["binary", "multilabel"])
    def test_matches_monai_sigmoid(self, mode, device):
        monai = pytest.importorskip("monai.losses")
        shape = (3, 1, 5, 6) if mode == "binary" else (3, 3, 5, 6)
        logits, labels = random_inputs(shape, device)
        target = labels.unsqueeze(1).double() if mode == "binary" else random_dense(shape, device)
        oracle = monai.TverskyLoss(sigmoid=True, alpha=0.8, beta=0.1)
        expected = oracle(logits, target)
        torch.testing.assert_close(tversky_loss(logits, target, mode=mode, fp_weight=0.8, fn_weight=0.1), expected)

    def test_matches_monai_without_background(self, device):
        monai = pytest.importorskip("monai.losses")
        logits, labels = random_inputs(SHAPES["2d"], device)
        oracle = monai.TverskyLoss(softmax=True, include_background=False, alpha=0.3, beta=0.7)
        torch.testing.assert_close(tversky_loss(logits, labels, include_background=False),
                                   oracle(logits, one_hot(labels, 4)))

    def test_hand_derived_weights_fall_on_false_positives_and_negatives(self, device):
        # p = (3/4, 1/4), t = (1, 0): TP = 3/4, FP = 1/4, FN = 1/4.
        logits = torch.tensor([[[[math.log(3.0), -math.log(3.0)]]]], dtype=torch.float64, device=device)
        labels = torch.tensor([[[1, 0]]], device=device)
        eps = 1e-5
        for fp_weight, fn_weight in [(0.3, 0.7), (1.0, 0.0), (0.0, 2.0)]:
            expected = 1 - (0.75 + eps) / (0.75 + fp_weight * 0.25 + fn_weight * 0.25 + eps)
            got = tversky_loss(logits, labels, fp_weight=fp_weight, fn_weight=fn_weight)
            assert got.item() == pytest.approx(expected, rel=1e-12)

    def test_half_weights_are_the_linear_dice(self, device):
        # (TP + eps/2) / (TP + (FP + FN)/2 + eps/2) = (2TP + eps) / (2TP + FP + FN + eps)
        logits, labels = random_inputs(SHAPES["2d"], device)
        torch.testing.assert_close(tversky_loss(logits, labels, fp_weight=0.5, fn_weight=0.5, eps=0.5e-5),
                                   dice_loss(logits, labels, squared=False, eps=1e-5))


class TestFocalTversky:
    def test_signature_is_the_one_hybrid_focal_builds_on(self):
        parameters = inspect.signature(FocalTverskyLoss).parameters.values()
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)
        assert {p.name: p.default for p in parameters} == {
            "fp_weight": 0.3, "fn_weight": 0.7, "gamma": 4 / 3, "batch": False, "mode": None,
            "include_background": True, "class_weights": None, "ignore_index": None, "eps": 1e-5, "reduction": "mean",
        }

    @shapes
    @pytest.mark.parametrize("gamma", [4 / 3, 1.0, 0.5])
    @pytest.mark.parametrize("batch", [False, True])
    def test_is_class_mean_of_powered_tversky(self, shape, gamma, batch, device):
        logits, labels = random_inputs(shape, device)
        num_classes = shape[1]
        per_class = torch.stack([
            tversky_loss(logits, labels, batch=batch, class_weights=F.one_hot(torch.tensor(c), num_classes).tolist(),
                         reduction="none")
            for c in range(num_classes)
        ])  # (C, B): 1 - TI per class (batch: each image's share of it)
        if batch:
            per_class = per_class.mean(dim=1, keepdim=True).expand(-1, shape[0])
        expected = (per_class ** (1 / gamma)).mean(dim=0)
        got = focal_tversky_loss(logits, labels, gamma=gamma, batch=batch, reduction="none")
        torch.testing.assert_close(got, expected)

    def test_perfect_prediction_is_clamped_with_finite_gradient(self, device):
        labels = torch.tensor([[[0, 1], [2, 1]]], device=device)
        perfect = (40.0 * one_hot(labels, 3)).requires_grad_(True)
        loss = focal_tversky_loss(perfect, labels)
        assert loss.item() == pytest.approx(1e-7**0.75, rel=1e-6)
        loss.backward()
        assert torch.isfinite(perfect.grad).all()

    def test_empty_target_with_false_positives_costs_about_one(self, device):
        logits = torch.full((1, 1, 3, 3), -20.0, dtype=torch.float64, device=device)
        logits[..., 0, 0] = 20.0
        empty = torch.zeros((1, 3, 3), dtype=torch.long, device=device)
        assert focal_tversky_loss(logits, empty).item() == pytest.approx(1.0, abs=1e-3)


# --------------------------------------------------------------------------- sensitivity-specificity


def naive_sensitivity_specificity(probs, target, valid, w, eps):
    """SPEC D.12 per image and class, straight from the definition, (B,)."""
    losses = torch.zeros(probs.shape[0], dtype=probs.dtype, device=probs.device)
    for i in range(probs.shape[0]):
        for c in range(probs.shape[1]):
            p, t = probs[i, c][valid[i]], target[i, c][valid[i]]
            sensitivity = (t * (t - p) ** 2).sum() / (t.sum() + eps)
            specificity = ((1 - t) * (t - p) ** 2).sum() / ((1 - t).sum() + eps)
            losses[i] += (w * sensitivity + (1 - w) * specificity) / probs.shape[1]
    return losses


class TestSensitivitySpecificity:
    @shapes
    @pytest.mark.parametrize("w", [0.05, 0.5, 1.0])
    def test_matches_definition_with_ignored_pixels(self, shape, w, device):
        logits, labels = random_inputs(shape, device)
        labels, ignored = ignore_some(labels)
        probs = logits.softmax(dim=1)
        expected = naive_sensitivity_specificity(probs, one_hot(labels.clamp_max(shape[1] - 1), shape[1]), ~ignored,
                                                 w, 1e-5)
        got = sensitivity_specificity_loss(logits, labels, sensitivity_weight=w, ignore_index=IGNORE, reduction="none")
        torch.testing.assert_close(got, expected)

    def test_hand_derived_binary_and_empty_target(self, device):
        # p = (3/4, 1/4), t = (1, 0): both terms are 1/16 over a normaliser of 1.
        logits = torch.tensor([[[[math.log(3.0), -math.log(3.0)]]]], dtype=torch.float64, device=device)
        eps = 1e-5
        expected = 0.05 * (1 / 16) / (1 + eps) + 0.95 * (1 / 16) / (1 + eps)
        labels = torch.tensor([[[1, 0]]], device=device)
        assert sensitivity_specificity_loss(logits, labels).item() == pytest.approx(expected, rel=1e-12)
        # Empty target: only the specificity term, (9/16 + 1/16) / 2.
        empty = torch.zeros_like(labels)
        expected_empty = 0.95 * (10 / 16) / (2 + eps)
        assert sensitivity_specificity_loss(logits, empty).item() == pytest.approx(expected_empty, rel=1e-12)


# --------------------------------------------------------------------------- MCC


def naive_mcc(probs, target, valid, eps):
    """1 - MCC per image and class with the empty/full fallbacks, from Python scalars, (B,)."""
    losses = torch.zeros(probs.shape[0], dtype=torch.float64)
    for i in range(probs.shape[0]):
        for c in range(probs.shape[1]):
            p, t = probs[i, c][valid[i]].tolist(), target[i, c][valid[i]].tolist()
            tp = sum(a * b for a, b in zip(p, t, strict=True))
            fp = sum(a * (1 - b) for a, b in zip(p, t, strict=True))
            fn = sum((1 - a) * b for a, b in zip(p, t, strict=True))
            tn = sum((1 - a) * (1 - b) for a, b in zip(p, t, strict=True))
            if sum(t) == 0:
                value = fp / (fp + tn + eps)
            elif sum(t) == len(t):
                value = fn / (tp + fn + eps)
            else:
                value = 1 - (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) + eps)
            losses[i] += value / probs.shape[1]
    return losses


class TestMCC:
    @shapes
    def test_matches_naive_with_empty_and_full_classes(self, shape, device):
        logits, _ = random_inputs(shape, device)
        labels = labels_with_absent_classes(shape, device)  # image 1: class 0 fills it, the others are empty
        labels, ignored = ignore_some(labels)
        expected = naive_mcc(logits.softmax(dim=1), one_hot(labels.clamp_max(shape[1] - 1), shape[1]), ~ignored, 1e-5)
        got = mcc_loss(logits, labels, ignore_index=IGNORE, reduction="none")
        torch.testing.assert_close(got, expected.to(device))

    def test_multilabel_matches_naive(self, device):
        shape = (2, 3, 4, 5)
        logits, _ = random_inputs(shape, device)
        target = random_dense(shape, device)
        target[0, 1] = 0.0
        target[1, 2] = 1.0
        valid = torch.ones((2, 4, 5), dtype=torch.bool, device=device)
        expected = naive_mcc(logits.sigmoid(), target, valid, 1e-5)
        torch.testing.assert_close(mcc_loss(logits, target, mode="multilabel", reduction="none"), expected.to(device))

    def test_hand_derived_hard_confusion_matrix(self, device):
        # Hard predictions on 4 pixels: TP = 2, FP = 1, TN = 1, FN = 0; MCC = 2 / sqrt(3 * 2 * 2 * 1).
        logits = torch.tensor([[[[40.0, 40.0, 40.0, -40.0]]]], dtype=torch.float64, device=device)
        labels = torch.tensor([[[1, 1, 0, 0]]], device=device)
        assert mcc_loss(logits, labels).item() == pytest.approx(1 - 2 / math.sqrt(12), rel=1e-6)
        # Predicting exactly the complement is perfectly anti-correlated: MCC = -1, loss 2.
        opposite = torch.tensor([[[[-40.0, -40.0, 40.0, 40.0]]]], dtype=torch.float64, device=device)
        assert mcc_loss(opposite, labels).item() == pytest.approx(2.0, rel=1e-6)

    def test_empty_and_full_targets_use_the_error_rate(self, device):
        logits = torch.tensor([[[[40.0, -40.0, -40.0, -40.0]]]], dtype=torch.float64, device=device)
        empty = torch.zeros((1, 1, 4), dtype=torch.long, device=device)
        assert mcc_loss(logits, empty).item() == pytest.approx(0.25, rel=1e-5)  # one false positive in four
        assert mcc_loss(torch.full_like(logits, -40.0), empty).item() == pytest.approx(0.0, abs=1e-12)
        full = torch.ones_like(empty)
        assert mcc_loss(logits, full).item() == pytest.approx(0.75, rel=1e-5)  # three misses in four
        assert mcc_loss(torch.full_like(logits, 40.0), full).item() == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- Lovasz (kornia, Berman)


def berman_lovasz_grad(gt_sorted):
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def berman_softmax_flat(probs, labels, classes):
    """Berman's lovasz_softmax_flat: probs (P, C) and labels (P,) of the counted pixels."""
    losses = []
    for c in range(probs.shape[1]):
        fg = (labels == c).double()
        if classes == "present" and fg.sum() == 0:
            continue
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, berman_lovasz_grad(fg[perm])))
    return torch.stack(losses).mean() if losses else probs.sum() * 0.0


def berman_hinge_flat(logits, labels):
    """Berman's lovasz_hinge_flat: logits (P,) and 0/1 labels (P,) of the counted pixels."""
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors_sorted, perm = torch.sort(errors, descending=True)
    return torch.dot(F.relu(errors_sorted), berman_lovasz_grad(labels[perm]))


def naive_lovasz(logits, labels, valid, *, mode, classes="present", batch=False):
    """Berman's algorithm with Python loops: one unit per image (or the whole batch), ignored pixels dropped."""
    units = [slice(None)] if batch else [slice(i, i + 1) for i in range(logits.shape[0])]
    values = []
    for unit in units:
        z, y, keep = logits[unit], labels[unit], valid[unit]
        if mode == "multiclass":
            probs = z.softmax(dim=1).movedim(1, -1)[keep]
            values.append(berman_softmax_flat(probs, y[keep], classes))
        else:  # y: (b, C, *S) dense 0/1 target; one hinge per channel, averaged
            values.append(torch.stack([berman_hinge_flat(z[:, c][keep], y[:, c][keep].double())
                                       for c in range(z.shape[1])]).mean())
    values = torch.stack(values)
    return values.expand(logits.shape[0]) if batch else values


class TestLovasz:
    @shapes
    @pytest.mark.parametrize("classes", ["present", "all"])
    @pytest.mark.parametrize("batch", [False, True])
    def test_softmax_matches_berman_with_ignored_pixels(self, shape, classes, batch, device):
        logits, _ = random_inputs(shape, device)
        labels, ignored = ignore_some(labels_with_absent_classes(shape, device))
        options = dict(classes=classes, batch=batch, ignore_index=IGNORE, reduction="none")
        expected = naive_lovasz(logits, labels, ~ignored, mode="multiclass", classes=classes, batch=batch)
        torch.testing.assert_close(lovasz_loss(logits, labels, **options), expected)
        weights = torch.arange(1.0, shape[0] + 1, dtype=torch.float64, device=device)
        torch.testing.assert_close(
            grad_of(lambda z: (lovasz_loss(z, labels, **options) * weights).sum(), logits),
            grad_of(lambda z: (naive_lovasz(z, labels, ~ignored, mode="multiclass", classes=classes,
                                            batch=batch) * weights).sum(), logits),
        )

    @shapes
    @pytest.mark.parametrize("mode", ["binary", "multilabel"])
    @pytest.mark.parametrize("batch", [False, True])
    def test_hinge_matches_berman_with_ignored_pixels(self, shape, mode, batch, device):
        shape = (shape[0], 1 if mode == "binary" else 3, *shape[2:])
        logits, labels = random_inputs(shape, device)
        target = labels.unsqueeze(1).double() if mode == "binary" else random_dense(shape, device)
        target[0] = 0.0  # an empty image: the hinge still penalises its false positives
        _, ignored = ignore_some(labels)
        marked = target.masked_fill(ignored.unsqueeze(1).expand_as(target), IGNORE)
        options = dict(mode=mode, batch=batch, ignore_index=IGNORE, reduction="none")
        expected = naive_lovasz(logits, target, ~ignored, mode=mode, batch=batch)
        torch.testing.assert_close(lovasz_loss(logits, marked, **options), expected)
        torch.testing.assert_close(
            grad_of(lambda z: lovasz_loss(z, marked, **options).sum(), logits),
            grad_of(lambda z: naive_lovasz(z, target, ~ignored, mode=mode, batch=batch).sum(), logits),
        )

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_matches_kornia(self, dtype, device):
        kornia = pytest.importorskip("kornia")
        logits, labels = random_inputs((3, 4, 16, 20), device, dtype=dtype)
        # kornia scores each image over all classes (a class absent from the image still counts).
        expected = kornia.losses.lovasz_softmax_loss(logits, labels)
        torch.testing.assert_close(lovasz_loss(logits, labels, classes="all"), expected)
        binary_logits = logits[:, :1].contiguous()
        binary_labels = (labels > 1).long()
        expected = kornia.losses.lovasz_hinge_loss(binary_logits, binary_labels)
        torch.testing.assert_close(lovasz_loss(binary_logits, binary_labels), expected)

    def test_hand_derived_hinge(self, device):
        # z = (2, 0.5, -1), t = (1, 0, 0): hinge errors (0, 1.5, 0). Sorted: 1.5 (t=0), 0, 0. The first
        # increment is the Jaccard loss after one false positive, 1 - 1/2 = 1/2: loss 0.75.
        logits = torch.tensor([[[[2.0, 0.5, -1.0]]]], dtype=torch.float64, device=device)
        labels = torch.tensor([[[1, 0, 0]]], device=device)
        assert lovasz_loss(logits, labels).item() == pytest.approx(0.75, rel=1e-12)

    def test_no_counted_pixel_gives_zero(self, device):
        logits, labels = random_inputs((2, 3, 4, 4), device)
        labels[1] = IGNORE
        per_image = lovasz_loss(logits, labels, ignore_index=IGNORE, reduction="none")
        assert per_image[1].item() == 0.0 and per_image[0].item() > 0.0

    @pytest.mark.parametrize("length", [1, 7, 5000])
    def test_radix_order_sorts_rows_like_torch_sort(self, length):
        generator = torch.Generator().manual_seed(length)
        errors = torch.rand(6, length, generator=generator)
        errors[0] = 0.5  # ties
        errors[1, : length // 2] = 0.0
        errors[1, : length // 4] = -0.0
        errors[2] *= 100.0  # hinge errors exceed 1
        in_order = errors.reshape(-1)[_descending_order(errors)].view_as(errors)
        torch.testing.assert_close(in_order, errors.sort(dim=1, descending=True).values)
        in_order_64 = errors.double().reshape(-1)[_descending_order(errors.double())].view_as(errors)
        torch.testing.assert_close(in_order_64, errors.double().sort(dim=1, descending=True).values)


# --------------------------------------------------------------------------- per-pixel forms, ignore_index


PER_PIXEL = {
    "generalized_dice": (generalized_dice_loss, generalized_dice_loss_per_pixel,
                         [{}, {"batch": True}, {"w_type": "simple", "include_background": False}]),
    "iou": (jaccard_loss, jaccard_loss_per_pixel, [{}, {"batch": True}, {"class_weights": [0.0, 1.0, 2.0, 0.5]}]),
    "tversky": (tversky_loss, tversky_loss_per_pixel,
                [{}, {"batch": True, "fp_weight": 0.9, "fn_weight": 0.1}, {"include_background": False}]),
    "sensitivity_specificity": (sensitivity_specificity_loss, sensitivity_specificity_loss_per_pixel,
                                [{}, {"batch": True}, {"sensitivity_weight": 0.7, "class_weights": [1, 2, 3, 4]}]),
}
per_pixel_cases = pytest.mark.parametrize(
    "name, options", [(name, options) for name, (_, _, variants) in PER_PIXEL.items() for options in variants]
)


@shapes
@per_pixel_cases
def test_per_pixel_mean_is_per_image_in_value_and_gradient(name, options, shape, device):
    loss, per_pixel, _ = PER_PIXEL[name]
    logits, labels = random_inputs(shape, device)
    labels, ignored = ignore_some(labels)
    options = {**options, "ignore_index": IGNORE}
    weights = torch.arange(1.0, shape[0] + 1, dtype=torch.float64, device=device)
    from_pixels = lambda z: counted_mean(per_pixel(z, labels, **options), ignored)  # noqa: E731
    from_images = lambda z: loss(z, labels, **options, reduction="none")  # noqa: E731
    assert (per_pixel(logits, labels, **options)[ignored] == 0).all()
    torch.testing.assert_close(from_pixels(logits), from_images(logits), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        grad_of(lambda z: (from_pixels(z) * weights).sum(), logits),
        grad_of(lambda z: (from_images(z) * weights).sum(), logits),
        rtol=1e-9,
        atol=1e-12,
    )


ALL_OPTIONS = [
    ("log_cosh_dice", {"batch": True}),
    ("generalized_dice", {"batch": True}),
    ("iou", {"batch": True}),
    ("lovasz", {"batch": True}),
    ("lovasz", {"classes": "all"}),
    ("tversky", {"batch": True}),
    ("focal_tversky", {"batch": True}),
    ("sensitivity_specificity", {"batch": True}),
    ("mcc", {"batch": True}),
    ("mcc", {"include_background": False}),
]


@pytest.mark.parametrize("name, options", ALL_OPTIONS)
def test_ignored_pixels_change_nothing_with_options(name, options, device):
    loss = create_loss(name, ignore_index=IGNORE, reduction="none", **options)
    logits, labels = random_inputs(SHAPES["3d"], device)
    labels, ignored = ignore_some(labels)
    ignored_channels = ignored.unsqueeze(1).expand_as(logits)
    changed = torch.where(ignored_channels, 10 * random_inputs(SHAPES["3d"], device, seed=9)[0], logits)
    torch.testing.assert_close(loss(changed, labels), loss(logits, labels))
    weights = torch.tensor([0.3, 1.7], dtype=torch.float64, device=device)
    grad = grad_of(lambda z: (loss(z, labels) * weights).sum(), logits)
    grad_changed = grad_of(lambda z: (loss(z, labels) * weights).sum(), changed)
    torch.testing.assert_close(grad[~ignored_channels], grad_changed[~ignored_channels])
    assert (grad[ignored_channels] == 0).all()


@pytest.mark.parametrize("name, options", ALL_OPTIONS + [("generalized_dice", {"w_type": "simple"})])
def test_gradcheck_with_options(name, options, device):
    loss = create_loss(name, reduction="none", **options)
    logits, labels = random_inputs((2, 3, 3, 4), device)
    labels[0] = labels[0].clamp_max(1)  # an absent class
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (logits,), eps=1e-6, atol=1e-5, rtol=1e-3)


# --------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    "name, options, error, argument",
    [
        ("tversky", {"fp_weight": -0.1}, ValueError, "fp_weight"),
        ("tversky", {"fn_weight": "0.7"}, TypeError, "fn_weight"),
        ("focal_tversky", {"gamma": 0.0}, ValueError, "gamma"),
        ("focal_tversky", {"eps": 0.0}, ValueError, "eps"),
        ("generalized_dice", {"w_type": "squared"}, ValueError, "w_type"),
        ("lovasz", {"classes": "some"}, ValueError, "classes"),
        ("lovasz", {"batch": 1}, TypeError, "batch"),
        ("sensitivity_specificity", {"sensitivity_weight": 1.5}, ValueError, "sensitivity_weight"),
        ("log_cosh_dice", {"squared": "yes"}, TypeError, "squared"),
        ("mcc", {"reduction": "avg"}, ValueError, "reduction"),
        ("iou", {"eps": float("nan")}, ValueError, "eps"),
    ],
)
def test_bad_options_raise_at_construction(name, options, error, argument):
    with pytest.raises(error, match=f"Expected `{argument}` to be"):
        create_loss(name, **options)


@pytest.mark.parametrize(
    "function, options, argument",
    [
        (generalized_dice_loss, {"include_background": False}, "include_background"),
        (lovasz_loss, {"include_background": False}, "include_background"),
        (mcc_loss, {"class_weights": [1.0, 2.0]}, "class_weights"),
        (tversky_loss, {"mode": "multiclass"}, "logits"),
    ],
)
def test_bad_options_for_the_input_raise_at_call(function, options, argument, device):
    logits, labels = random_inputs((2, 1, 4, 4), device)
    with pytest.raises(ValueError, match=f"Expected `{argument}` to be"):
        function(logits, labels, **options)


# --------------------------------------------------------------------------- class-pooled (micro) average, soft labels


class TestMicroAndSoftLabel:
    def test_micro_dice_is_kornias_default(self, device):
        kornia = pytest.importorskip("kornia")
        logits, labels = random_inputs((2, 4, 6, 7), device)
        expected = kornia.losses.dice_loss(logits, labels)  # average="micro"
        torch.testing.assert_close(dice_loss(logits, labels, squared=False, average="micro", eps=1e-8), expected)

    @pytest.mark.parametrize("batch", [False, True])
    def test_micro_is_one_ratio_over_the_pooled_counts(self, batch, device):
        logits, labels = random_inputs((3, 4, 6, 7), device)
        probs, target = logits.softmax(1), one_hot(labels, 4)
        dims = (0, 1, 2, 3) if batch else (1, 2, 3)
        tp, fp, fn = (probs * target).sum(dims), (probs * (1 - target)).sum(dims), ((1 - probs) * target).sum(dims)
        eps = 1e-5
        # the class weights a_c = 1/4 sum to one, so eps enters the pooled counts as 4 eps
        tversky = ((0.3 * fp + 0.7 * fn) / (tp + 0.3 * fp + 0.7 * fn + 4 * eps)).mean()
        torch.testing.assert_close(tversky_loss(logits, labels, average="micro", batch=batch), tversky)
        squared_den = (probs**2 + target).sum(dims)
        dice = ((squared_den - 2 * tp) / (squared_den + 4 * eps)).mean()
        torch.testing.assert_close(dice_loss(logits, labels, average="micro", batch=batch), dice)
        torch.testing.assert_close(dice_loss_per_pixel(logits, labels, average="micro", batch=batch).mean(), dice)

    def test_macro_tversky_is_kornias_when_every_class_is_present(self, device):
        kornia = pytest.importorskip("kornia")
        logits, labels = random_inputs((2, 4, 6, 7), device)
        assert (one_hot(labels, 4).sum(dim=(2, 3)) > 0).all()
        expected = kornia.losses.tversky_loss(logits, labels, alpha=0.3, beta=0.7, eps=1e-12)
        torch.testing.assert_close(tversky_loss(logits, labels, eps=1e-12), expected)

    def test_soft_label_dice_is_monais_and_reaches_zero(self, device):
        monai = pytest.importorskip("monai.losses")
        logits, _ = random_inputs((2, 3, 6, 7), device)
        soft = torch.rand((2, 3, 6, 7), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        soft = soft.to(device).softmax(dim=1)
        expected = monai.DiceLoss(softmax=True, soft_label=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, soft)
        torch.testing.assert_close(dice_loss(logits, soft, squared=False, soft_label=True), expected)
        at_target = logits.softmax(1).detach()
        assert dice_loss(logits, at_target, squared=False, soft_label=True).item() == pytest.approx(0.0, abs=1e-12)
        assert dice_loss(logits, at_target, squared=False).item() > 0.3  # the linear Dice does not reach 0
        _, labels = random_inputs((2, 3, 6, 7), device)  # hard targets: the same loss
        torch.testing.assert_close(dice_loss(logits, labels, squared=False, soft_label=True),
                                   dice_loss(logits, labels, squared=False))

    def test_options_are_checked_at_construction(self):
        with pytest.raises(ValueError, match="^Expected `average`"):
            DiceLoss(average="weighted")
        with pytest.raises(ValueError, match="^Expected `average`"):
            TverskyLoss(average="samples")
        with pytest.raises(TypeError, match="^Expected `soft_label`"):
            DiceLoss(soft_label=1)
