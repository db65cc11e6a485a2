"""Tests of the compound losses: hand-derived tiny cases, the papers' special cases, and oracles
(MONAI, naive re-implementations of the reference formulas, loops with full sorts)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglosses import create_loss, loss_class
from seglosses.compound import (
    Weighted,
    _tie_breaking_noise,
    ce_dice_pixel_loss,
    ce_dice_pixel_parts,
    combo_loss,
    dice_ce_loss,
    dice_focal_loss,
    exp_log_loss,
    hybrid_focal_loss,
    topk_dice_loss,
    unified_focal_loss,
)
from seglosses.pixel import cross_entropy, focal_loss
from seglosses.region import dice_loss

IGNORE = 255


def random_inputs(shape, device, *, seed=0, scale=2.0, num_labels=None):
    """float64 logits of ``shape`` and integer labels (B, *S) in [0, num_labels or C)."""
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_labels or shape[1], (shape[0], *shape[2:]), generator=generator)
    return logits.to(device), labels.to(device)


def with_ignored(labels, *, seed=5, fraction=0.3):
    generator = torch.Generator().manual_seed(seed)
    ignored = torch.rand(labels.shape, generator=generator) < fraction
    ignored.view(labels.shape[0], -1)[:, 0] = True
    return labels.masked_fill(ignored.to(labels.device), IGNORE), ignored.to(labels.device)


def grad_of(fn, logits):
    logits = logits.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(logits), logits)
    return grad


def assert_same_value_and_gradient(fn, reference, logits, **tolerances):
    torch.testing.assert_close(fn(logits), reference(logits), **tolerances)
    torch.testing.assert_close(grad_of(lambda z: fn(z).sum(), logits), grad_of(lambda z: reference(z).sum(), logits),
                               **tolerances)


def as_two_class(logits):
    """(B, 1, *S) sigmoid logits as the softmax logits (0, z); multiclass logits unchanged."""
    return logits if logits.shape[1] > 1 else torch.cat([torch.zeros_like(logits), logits], dim=1)


def logits_of_probs(probs):
    """Logits whose softmax over dim 1 is ``probs``."""
    return torch.tensor(probs, dtype=torch.float64).log()


# --------------------------------------------------------------------------- generic contract of this family

FUNCTIONS = {
    "combo": combo_loss,
    "exp_log": exp_log_loss,
    "dice_ce": dice_ce_loss,
    "dice_focal": dice_focal_loss,
    "unified_focal": unified_focal_loss,
    "topk_dice": topk_dice_loss,
    "ce_dice_pixel": ce_dice_pixel_loss,
    "hybrid_focal": hybrid_focal_loss,
}
CONFIGS = [
    ("combo", {}),
    ("combo", {"alpha": 0.3, "beta": 0.8, "include_background": False}),
    ("combo", {"dice_form": "negative"}),
    ("exp_log", {}),
    ("exp_log", {"class_weights": [1.0, 2.0, 0.5], "frequency_weighting": False}),
    ("dice_ce", {"squared": False, "class_weights": [1.0, 2.0, 0.5], "lambda_ce": 0.5}),
    ("dice_focal", {"gamma": 1.0, "alpha": 0.3, "lambda_dice": 0.2}),
    ("unified_focal", {}),
    ("unified_focal", {"asymmetric": False, "focal_weight": 0.2, "background_classes": {0, 2}}),
    ("topk_dice", {}),
    ("topk_dice", {"k_percent": 30, "exclusion": "literal", "include_background": False}),
    ("ce_dice_pixel", {}),
    ("ce_dice_pixel", {"dice_decomposition": "error_linear", "class_weights": [0.5, 1.0, 3.0]}),
    ("ce_dice_pixel", {"dice_decomposition": "overlap"}),
    ("ce_dice_pixel", {"dice_decomposition": "paper_literal"}),
    ("hybrid_focal", {}),
]
config_params = pytest.mark.parametrize("name, options", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])


@config_params
@pytest.mark.parametrize("spatial", [(4, 5), (3, 3, 4)], ids=["2d", "3d"])
def test_module_matches_function(name, options, spatial, device):
    logits, labels = random_inputs((2, 3, *spatial), device)
    labels, _ = with_ignored(labels)
    loss = create_loss(name, ignore_index=IGNORE, **options)
    expected = FUNCTIONS[name](logits, labels, ignore_index=IGNORE, reduction="none", **options)
    torch.testing.assert_close(loss.per_image(logits, labels), expected)
    torch.testing.assert_close(loss(logits, labels), expected.mean())


@config_params
def test_gradcheck_float64(name, options, device):
    logits, labels = random_inputs((2, 3, 3, 4), device, seed=3)
    loss = create_loss(name, reduction="none", **options)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (logits,), eps=1e-6, atol=1e-6, rtol=1e-4)


@config_params
def test_per_pixel_mean_is_per_image(name, options, device):
    loss = create_loss(name, ignore_index=IGNORE, **options)
    logits, labels = random_inputs((2, 3, 4, 5), device, seed=1)
    labels, ignored = with_ignored(labels)
    if not loss.has_per_pixel:
        with pytest.raises(TypeError, match="per-pixel"):
            loss.per_pixel(logits, labels)
        return
    counted = (~ignored).sum(dim=(1, 2)).double()
    per_pixel = loss.per_pixel(logits, labels)
    assert per_pixel.shape == (2, 4, 5) and (per_pixel[ignored] == 0).all()
    assert_same_value_and_gradient(
        lambda z: loss.per_pixel(z, labels).sum(dim=(1, 2)) / counted * torch.tensor([0.3, 1.7], device=device),
        lambda z: loss.per_image(z, labels) * torch.tensor([0.3, 1.7], device=device),
        logits, rtol=1e-10, atol=1e-12,
    )


def test_class_contract_of_compounds():
    expected = {
        "combo": (("multiclass", "binary", "multilabel"), True),
        "exp_log": (("multiclass",), False),
        "dice_ce": (("multiclass", "binary", "multilabel"), True),
        "dice_focal": (("multiclass", "binary", "multilabel"), True),
        "unified_focal": (("multiclass", "binary"), False),
        "topk_dice": (("multiclass", "binary"), False),
        "ce_dice_pixel": (("multiclass", "binary", "multilabel"), True),
        "hybrid_focal": (("multiclass", "binary", "multilabel"), False),
    }
    for name, (modes, has_per_pixel) in expected.items():
        cls = loss_class(name)
        assert (cls.modes, cls.has_per_pixel) == (modes, has_per_pixel), name
    assert not create_loss("combo", dice_form="negative").has_per_pixel


@pytest.mark.parametrize(
    "name, options, argument",
    [
        ("combo", {"dice_form": "dsc"}, "dice_form"),
        ("combo", {"beta": 1.5}, "beta"),
        ("exp_log", {"dice_gamma": 0.0}, "dice_gamma"),
        ("exp_log", {"mode": "binary"}, "mode"),
        ("unified_focal", {"gamma": 1.0}, "gamma"),
        ("unified_focal", {"delta": -0.1}, "delta"),
        ("unified_focal", {"background_classes": [0, -1]}, "background_classes"),
        ("unified_focal", {"mode": "multilabel"}, "mode"),
        ("topk_dice", {"k_percent": 0}, "k_percent"),
        ("topk_dice", {"exclusion": "approximate"}, "exclusion"),
        ("ce_dice_pixel", {"dice_decomposition": "squared"}, "dice_decomposition"),
        ("dice_ce", {"lambda_ce": -1.0}, "lambda_ce"),
        ("dice_focal", {"lambda_focal": -1.0}, "lambda_focal"),
    ],
)
def test_bad_options_are_refused_at_construction(name, options, argument):
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`"):
        create_loss(name, **options)


def test_unsupported_modes_and_classes_are_refused(device):
    logits, labels = random_inputs((2, 1, 4, 4), device, num_labels=2)
    with pytest.raises(ValueError, match="`mode`"):
        exp_log_loss(logits, labels)
    logits, labels = random_inputs((2, 3, 4, 4), device)
    with pytest.raises(ValueError, match="`background_classes`"):
        unified_focal_loss(logits, labels, background_classes=(3,))


# --------------------------------------------------------------------------- Dice + CE, Dice + focal


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("squared", [True, False])
def test_dice_ce_matches_monai(spatial, squared, device):
    monai_losses = pytest.importorskip("monai.losses")
    logits, labels = random_inputs((2, 4, *spatial), device)
    oracle = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, squared_pred=squared)
    expected = oracle(logits, labels.unsqueeze(1))
    torch.testing.assert_close(dice_ce_loss(logits, labels, squared=squared), expected)
    torch.testing.assert_close(dice_ce_loss(logits, labels, squared=squared, lambda_dice=0.3, lambda_ce=2.0),
                               monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, squared_pred=squared,
                                                       lambda_dice=0.3, lambda_ce=2.0)(logits, labels.unsqueeze(1)))


def test_dice_ce_class_weights_weigh_the_cross_entropy_only(device):
    logits, labels = random_inputs((2, 3, 5, 5), device)
    weights = [0.2, 1.0, 3.0]
    expected = dice_loss(logits, labels) + cross_entropy(logits, labels, class_weights=weights)
    torch.testing.assert_close(dice_ce_loss(logits, labels, class_weights=weights), expected)
    loss = create_loss("dice_ce", class_weights=weights, lambda_dice=0.4)
    assert isinstance(loss, Weighted) and loss.weights == [0.4, 1.0]


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)], ids=["2d", "3d"])
def test_dice_focal_matches_monai(spatial, device):
    monai_losses = pytest.importorskip("monai.losses")
    # MONAI's DiceFocalLoss always uses a sigmoid focal term: it is our multilabel mode.
    generator = torch.Generator().manual_seed(4)
    logits = (2 * torch.randn((2, 3, *spatial), generator=generator, dtype=torch.float64)).to(device)
    target = torch.randint(0, 2, (2, 3, *spatial), generator=generator).double().to(device)
    oracle = monai_losses.DiceFocalLoss(sigmoid=True, squared_pred=True, gamma=2.0)
    torch.testing.assert_close(dice_focal_loss(logits, target, mode="multilabel"), oracle(logits, target))
    # Softmax: MONAI's focal mean runs over the class axis too, so ours is C times MONAI's.
    logits, labels = random_inputs((2, 3, *spatial), device)
    onehot = F.one_hot(labels, 3).movedim(-1, 1).double()
    dice = monai_losses.DiceLoss(softmax=True, squared_pred=True)(logits, onehot)
    focal = monai_losses.FocalLoss(use_softmax=True, gamma=2.0)(logits, onehot)
    torch.testing.assert_close(dice_focal_loss(logits, labels, lambda_focal=0.5), dice + 0.5 * 3 * focal)


def test_dice_focal_is_the_sum_of_its_terms(device):
    logits, labels = random_inputs((2, 3, 5, 5), device)
    expected = 0.2 * dice_loss(logits, labels, squared=False) + focal_loss(logits, labels, gamma=1.0, alpha=0.25)
    actual = dice_focal_loss(logits, labels, lambda_dice=0.2, squared=False, gamma=1.0, alpha=0.25)
    torch.testing.assert_close(actual, expected)


# --------------------------------------------------------------------------- Combo


def test_combo_hand_derived_binary(device):
    # Two pixels, p = (0.8, 0.3), t = (1, 0); alpha = 0.4, beta = 0.7, eps = 1e-5.
    probs = torch.tensor([0.8, 0.3], dtype=torch.float64)
    logits = (probs / (1 - probs)).log().view(1, 1, 1, 2).to(device)
    target = torch.tensor([[[1, 0]]], device=device)
    bce = (0.7 * -math.log(0.8) + 0.3 * -math.log(0.7)) / 2
    dsc = (2 * 0.8 + 1e-5) / (0.8 + 0.3 + 1 + 1e-5)
    expected = 0.4 * bce + 0.6 * (1 - dsc)
    actual = combo_loss(logits, target, alpha=0.4, beta=0.7)
    assert actual.item() == pytest.approx(expected, rel=1e-12)
    negative = combo_loss(logits, target, alpha=0.4, beta=0.7, dice_form="negative")
    assert negative.item() == pytest.approx(0.4 * bce - 0.6 * dsc, rel=1e-12)


def test_combo_is_half_bce_plus_linear_dice_at_beta_half(device):
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn((2, 3, 4, 5), generator=generator, dtype=torch.float64).to(device)
    target = torch.randint(0, 2, (2, 3, 4, 5), generator=generator).double().to(device)

    def expected(z):
        bce = F.binary_cross_entropy_with_logits(z, target, reduction="none").mean(dim=(1, 2, 3))
        return 0.3 * 0.5 * bce + 0.7 * dice_loss(z, target, mode="multilabel", squared=False, reduction="none")

    assert_same_value_and_gradient(
        lambda z: combo_loss(z, target, mode="multilabel", alpha=0.3, reduction="none"), expected, logits
    )


def test_combo_multiclass_matches_naive_softmax_bce(device):
    logits, labels = random_inputs((2, 3, 4, 5), device)
    target = F.one_hot(labels, 3).movedim(-1, 1).double()
    weights = torch.tensor([0.5, 1.0, 2.5], dtype=torch.float64, device=device)

    def naive(z):
        p = z.softmax(dim=1)
        bce = -(0.8 * target * p.log() + 0.2 * (1 - target) * (1 - p).log())
        bce = (bce * weights.view(1, 3, 1, 1)).sum(dim=1).mean(dim=(1, 2)) / weights.sum()
        dsc = (2 * (p * target).sum(dim=(2, 3)) + 1e-5) / (p.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1e-5)
        return 0.5 * bce + 0.5 * (1 - (dsc * weights).sum(dim=1) / weights.sum())

    assert_same_value_and_gradient(
        lambda z: combo_loss(z, labels, beta=0.8, class_weights=weights, reduction="none"), naive, logits
    )


def test_combo_negative_form_has_the_same_gradient_and_no_per_pixel_form(device):
    logits, labels = random_inputs((2, 3, 4, 5), device)
    one_minus = grad_of(lambda z: combo_loss(z, labels), logits)
    negative = grad_of(lambda z: combo_loss(z, labels, dice_form="negative"), logits)
    torch.testing.assert_close(negative, one_minus)
    with pytest.raises(TypeError, match="ComboLoss"):
        create_loss("combo", dice_form="negative").per_pixel(logits, labels)


def test_combo_is_stable_for_saturated_softmax(device):
    logits = torch.tensor([[[[60.0, -60.0]], [[-60.0, 60.0]]]], dtype=torch.float32, device=device)
    labels = torch.tensor([[[1, 0]]], device=device)  # both pixels confidently wrong
    logits.requires_grad_(True)
    value = combo_loss(logits, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all() and value > 5


# --------------------------------------------------------------------------- exponential logarithmic


def naive_exp_log(logits, labels, *, class_weights=None, frequency_weighting=True, w_dice=0.8, w_ce=0.2,
                  gamma_dice=0.3, gamma_ce=0.3, eps=1e-5):
    probs = logits.softmax(axis=1).cpu().numpy()
    labels = labels.cpu().numpy()
    losses = []
    for p, y in zip(probs, labels, strict=True):
        num_classes = p.shape[0]
        onehot = np.stack([(y == c) for c in range(num_classes)]).astype(float)
        dsc = [(2 * (p[c] * onehot[c]).sum() + eps) / (p[c].sum() + onehot[c].sum() + eps) for c in range(num_classes)]
        dice_term = np.mean([(-math.log(d)) ** gamma_dice for d in dsc])
        counts = onehot.reshape(num_classes, -1).sum(axis=1)
        omega = np.ones(num_classes) if class_weights is None else np.asarray(class_weights, dtype=float)
        if frequency_weighting:
            omega = omega * np.sqrt(counts.sum() / np.maximum(counts, 1))
        p_true = np.take_along_axis(p, y[None], axis=0)[0]
        ce_term = np.mean(omega[y] * (-np.log(p_true)) ** gamma_ce)
        losses.append(w_dice * dice_term + w_ce * ce_term)
    return np.array(losses)


@pytest.mark.parametrize("options", [{}, {"class_weights": [1.0, 0.5, 2.0]},
                                     {"class_weights": [1.0, 0.5, 2.0], "frequency_weighting": False}])
def test_exp_log_matches_naive(options, device):
    logits, labels = random_inputs((3, 3, 5, 6), device)
    labels[0] = labels[0].clamp_max(1)  # image 0 lacks class 2
    expected = naive_exp_log(logits, labels, **options)
    actual = exp_log_loss(logits, labels, reduction="none", **options)
    np.testing.assert_allclose(actual.cpu().numpy(), expected, rtol=1e-10)


def test_exp_log_uniform_class_weights_change_nothing(device):
    logits, labels = random_inputs((2, 3, 4, 5), device)
    uniform = exp_log_loss(logits, labels, class_weights=[1.0, 1.0, 1.0])
    torch.testing.assert_close(uniform, exp_log_loss(logits, labels))


def test_exp_log_perfect_prediction_is_about_zero_with_finite_gradient(device):
    _, labels = random_inputs((2, 3, 4, 5), device)
    logits = 40.0 * F.one_hot(labels, 3).movedim(-1, 1).double()
    logits.requires_grad_(True)
    value = exp_log_loss(logits, labels)
    value.backward()
    assert value.item() < 1e-4 and torch.isfinite(logits.grad).all()


# --------------------------------------------------------------------------- Unified Focal


def reference_unified_focal(p_fg, t_fg, *, focal_weight, delta, gamma, asymmetric):
    """The binary 2D formulas of mlyg/unified-focal-loss (probabilities clipped to [1e-7, 1 - 1e-7],
    channels (background, foreground)), with lambda on the focal part as in the paper."""
    eps = 1e-7
    y_pred = np.clip(np.stack([1 - p_fg, p_fg], axis=-1), eps, 1 - eps)
    y_true = np.stack([1 - t_fg, t_fg], axis=-1)
    cross_entropy_map = -y_true * np.log(y_pred)
    back_ce = (1 - delta) * (1 - y_pred[..., 0]) ** gamma * cross_entropy_map[..., 0]
    fore_ce = delta * cross_entropy_map[..., 1]
    if not asymmetric:
        fore_ce = fore_ce * (1 - y_pred[..., 1]) ** gamma
    focal = np.mean(back_ce + fore_ce)
    tp = (y_true * y_pred).sum(axis=(1, 2))
    fn = (y_true * (1 - y_pred)).sum(axis=(1, 2))
    fp = ((1 - y_true) * y_pred).sum(axis=(1, 2))
    tversky = (tp + eps) / (tp + delta * fn + (1 - delta) * fp + eps)
    back_dice = 1 - tversky[:, 0]
    if not asymmetric:
        back_dice = back_dice * (1 - tversky[:, 0]) ** -gamma
    fore_dice = (1 - tversky[:, 1]) * (1 - tversky[:, 1]) ** -gamma
    focal_tversky = np.mean(np.stack([back_dice, fore_dice], axis=-1))
    return focal_weight * focal + (1 - focal_weight) * focal_tversky


@pytest.mark.parametrize("asymmetric", [True, False], ids=["asymmetric", "symmetric"])
@pytest.mark.parametrize("focal_weight, delta, gamma", [(0.5, 0.6, 0.5), (0.3, 0.7, 0.2)])
def test_unified_focal_matches_reference_binary(asymmetric, focal_weight, delta, gamma, device):
    logits, labels = random_inputs((3, 1, 6, 7), device, num_labels=2)
    options = {"focal_weight": focal_weight, "delta": delta, "gamma": gamma, "asymmetric": asymmetric}
    expected = reference_unified_focal(logits[:, 0].sigmoid().cpu().numpy(), labels.double().cpu().numpy(),
                                       **options)
    assert unified_focal_loss(logits, labels, **options).item() == pytest.approx(expected, rel=1e-9)
    # Binary mode is the two-channel softmax with background logit 0.
    assert_same_value_and_gradient(lambda z: unified_focal_loss(as_two_class(z), labels, reduction="none", **options),
                                   lambda z: unified_focal_loss(z, labels, reduction="none", **options), logits)


def test_unified_focal_multiclass_generalisation(device):
    """Rare classes get delta and the enhancement; background classes get 1 - delta and the suppression."""
    logits, labels = random_inputs((2, 4, 5, 6), device)
    delta, gamma, background = 0.6, 0.4, (0, 2)
    probs = logits.softmax(dim=1)
    target = F.one_hot(labels, 4).movedim(-1, 1).double()
    rare = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64, device=device).view(1, 4, 1, 1)
    modulation = rare + (1 - rare) * (1 - probs) ** gamma
    omega = rare * delta + (1 - rare) * (1 - delta)
    focal = (-(omega * modulation * target * probs.log()).sum(dim=1)).mean(dim=(1, 2))
    tp, fn, fp = ((probs * target).sum(dim=(2, 3)), ((1 - probs) * target).sum(dim=(2, 3)),
                  (probs * (1 - target)).sum(dim=(2, 3)))
    tversky = (tp + 1e-7) / (tp + delta * fn + (1 - delta) * fp + 1e-7)
    exponent = 1 - gamma * rare.view(1, 4)
    expected = 0.5 * focal + 0.5 * ((1 - tversky) ** exponent).mean(dim=1)
    actual = unified_focal_loss(logits, labels, gamma=gamma, background_classes=background, reduction="none")
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("asymmetric", [True, False], ids=["asymmetric", "symmetric"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 1, 3, 4, 5)], ids=["multiclass-2d", "binary-3d"])
def test_unified_focal_special_cases(asymmetric, shape, device):
    """gamma = 0, delta = 0.5: mFT is the linear Dice loss (smoothing 2 eps) and mF is half the CE."""
    logits, labels = random_inputs(shape, device, num_labels=max(2, shape[1]))
    options = {"asymmetric": asymmetric, "gamma": 0.0, "delta": 0.5, "reduction": "none"}

    def dice(z):
        return dice_loss(as_two_class(z), labels, squared=False, eps=2e-7, reduction="none")

    def half_ce(z):
        return 0.5 * cross_entropy(as_two_class(z), labels, reduction="none")

    for focal_weight, expected in [(0.0, dice), (1.0, half_ce), (0.3, lambda z: 0.3 * half_ce(z) + 0.7 * dice(z))]:
        assert_same_value_and_gradient(
            lambda z, w=focal_weight: unified_focal_loss(z, labels, focal_weight=w, **options), expected, logits
        )


def test_unified_focal_perfect_prediction_is_about_zero_with_finite_gradient(device):
    _, labels = random_inputs((2, 3, 4, 5), device)
    logits = 40.0 * F.one_hot(labels, 3).movedim(-1, 1).double()
    for asymmetric in (True, False):
        z = logits.clone().requires_grad_(True)
        value = unified_focal_loss(z, labels, asymmetric=asymmetric)
        value.backward()
        assert value.item() < 1e-4 and torch.isfinite(z.grad).all()


# --------------------------------------------------------------------------- Hybrid Focal


def reference_hybrid_focal(probs, onehot, *, focal_weight, gamma_f, fn_weight, fp_weight, gamma_ft, smooth):
    """Yeung's hybrid focal loss on (B, C, H, W) softmax probabilities: the focal loss summed over
    classes and averaged over pixels, plus the focal Tversky loss averaged over classes."""
    focal = np.mean(np.sum((1 - probs) ** gamma_f * -onehot * np.log(probs), axis=1))
    tp = (onehot * probs).sum(axis=(2, 3))
    fn = (onehot * (1 - probs)).sum(axis=(2, 3))
    fp = ((1 - onehot) * probs).sum(axis=(2, 3))
    tversky = (tp + smooth) / (tp + fn_weight * fn + fp_weight * fp + smooth)
    focal_tversky = np.mean((1 - tversky) ** (1 / gamma_ft))
    return focal_weight * focal + (1 - focal_weight) * focal_tversky


@pytest.mark.parametrize("num_classes", [2, 3])
def test_hybrid_focal_matches_reference(num_classes, device):
    logits, labels = random_inputs((3, num_classes, 6, 7), device)
    options = {"focal_weight": 0.4, "focal_gamma": 2.0, "fn_weight": 0.7, "fp_weight": 0.3, "tversky_gamma": 4 / 3}
    expected = reference_hybrid_focal(logits.softmax(dim=1).cpu().numpy(),
                                      F.one_hot(labels, num_classes).movedim(-1, 1).double().cpu().numpy(),
                                      focal_weight=0.4, gamma_f=2.0, fn_weight=0.7, fp_weight=0.3, gamma_ft=4 / 3,
                                      smooth=1e-6)
    assert hybrid_focal_loss(logits, labels, eps=1e-6, **options).item() == pytest.approx(expected, rel=1e-9)
    loss = create_loss("hybrid_focal", eps=1e-6, **options)
    assert isinstance(loss, Weighted) and loss.weights == pytest.approx([0.4, 0.6])
    torch.testing.assert_close(loss(logits, labels), hybrid_focal_loss(logits, labels, eps=1e-6, **options))


# --------------------------------------------------------------------------- TopK Dice


def naive_topk_dice(logits, labels, *, k_percent, exclusion, include_background=True, ignore_index=None, eps=1e-5):
    """Per image and class with a full sort of the TP map; no tie-breaking noise (inputs are tie-free)."""
    probs = logits.softmax(dim=1) if logits.shape[1] > 1 else torch.cat([1 - logits.sigmoid(), logits.sigmoid()], 1)
    per_image = []
    for image_probs, image_labels in zip(probs, labels, strict=True):
        terms = []
        for c in range(probs.shape[1]):
            y = (image_labels == c).flatten().double()
            p = image_probs[c].flatten()
            if ignore_index is not None:
                p = p * (image_labels != ignore_index).flatten()
            count = int(y.sum())
            if count == 0 or (c == 0 and not include_background):
                continue
            scores = (y * p).tolist()
            order = sorted(range(len(scores)), key=lambda n: -scores[n])
            excluded_count = math.floor((100 - k_percent) * count / 100)
            if exclusion == "exact":
                excluded = set(order[:excluded_count])
            else:
                threshold = scores[order[excluded_count - 1]] if excluded_count > 0 else math.inf
                excluded = {n for n in range(len(scores)) if scores[n] > threshold}
            keep = torch.tensor([0.0 if n in excluded else 1.0 for n in range(len(scores))], dtype=torch.float64,
                                device=p.device)
            yk, pk = y * keep, p * keep
            terms.append(1 - (2 * (yk * pk).sum() + eps) / ((yk * yk).sum() + (pk * pk).sum() + eps))
        per_image.append(torch.stack(terms).mean() if terms else probs.new_zeros(()))
    return torch.stack(per_image)


@pytest.mark.parametrize("exclusion", ["exact", "literal"])
@pytest.mark.parametrize("k_percent, include_background", [(50, True), (30, False), (75, True)])
@pytest.mark.parametrize("shape", [(3, 3, 6, 7), (2, 4, 3, 4, 5), (2, 1, 5, 6)], ids=["2d", "3d", "binary"])
@pytest.mark.parametrize("with_ignore", [False, True], ids=["all-pixels", "ignore"])
def test_topk_dice_matches_naive_loop(exclusion, k_percent, include_background, shape, with_ignore, device):
    logits, labels = random_inputs(shape, device, seed=6, num_labels=max(2, shape[1]))
    labels[0] = labels[0].clamp_max(1)  # image 0 lacks its last class
    options = {"k_percent": k_percent, "exclusion": exclusion, "include_background": include_background}
    if with_ignore:
        labels, _ = with_ignored(labels)
        options["ignore_index"] = IGNORE
    assert_same_value_and_gradient(lambda z: topk_dice_loss(z, labels, reduction="none", **options),
                                   lambda z: naive_topk_dice(z, labels, **options), logits)


def test_topk_dice_hand_derived_ties(device):
    """All probabilities 1/2: only the fixed noise orders the pixels, and "exact" excludes exactly D of them."""
    labels = torch.tensor([[[0, 0, 0, 1, 1, 1, 1, 1]]], device=device)  # n_0 = 3, n_1 = 5; P = 8
    logits = torch.zeros(1, 2, 1, 8, dtype=torch.float64, device=device)

    def expected(excluded_per_class):
        dice = []
        for count, excluded in zip((3, 5), excluded_per_class, strict=True):
            kept = count - excluded
            dice.append((2 * 0.5 * kept + 1e-5) / (kept + 0.25 * (8 - excluded) + 1e-5))
        return 1 - sum(dice) / 2

    # K = 50: D = (1, 2); the literal rule excludes D - 1 = (0, 1).
    assert topk_dice_loss(logits, labels).item() == pytest.approx(expected((1, 2)), rel=1e-12)
    assert topk_dice_loss(logits, labels, exclusion="literal").item() == pytest.approx(expected((0, 1)), rel=1e-12)
    assert topk_dice_loss(logits, labels, k_percent=100).item() == pytest.approx(expected((0, 0)), rel=1e-12)


def test_topk_dice_noise_is_fixed_cached_and_small(device):
    first = _tie_breaking_noise((4, 5), 0, device, torch.float64)
    assert first is _tie_breaking_noise((4, 5), 0, device, torch.float64)
    assert first.shape == (20,) and (first >= 0).all() and (first < 1e-6).all()
    assert not torch.equal(first, _tie_breaking_noise((4, 5), 1, device, torch.float64))


def test_topk_dice_full_k_is_squared_dice_over_present_classes(device):
    logits, labels = random_inputs((2, 3, 5, 6), device)
    labels[1] = labels[1].clamp_max(1)  # image 1 lacks class 2, which drops out of its average
    expected = torch.cat([dice_loss(logits[:1], labels[:1], reduction="none"),
                          dice_loss(logits[1:], labels[1:], class_weights=[1.0, 1.0, 0.0], reduction="none")])
    torch.testing.assert_close(topk_dice_loss(logits, labels, k_percent=100, reduction="none"), expected)


def test_topk_dice_no_present_class_scores_zero(device):
    logits, _ = random_inputs((2, 3, 4, 4), device)
    labels = torch.zeros(2, 4, 4, dtype=torch.long, device=device)
    torch.testing.assert_close(topk_dice_loss(logits, labels, include_background=False, reduction="none"),
                               torch.zeros(2, dtype=torch.float64, device=device))


# --------------------------------------------------------------------------- CE + per-pixel Dice (SPEC A.2)


def test_ce_dice_pixel_hand_derived(device):
    # One image, two classes, two pixels: p(class 0) = (0.8, 0.3), labels (0, 1); w = (1, 2).
    logits = logits_of_probs([[[[0.8, 0.3]], [[0.2, 0.7]]]]).to(device)
    labels = torch.tensor([[[0, 1]]], device=device)
    denominators = (0.8**2 + 0.3**2 + 1 + 1e-5, 0.2**2 + 0.7**2 + 1 + 1e-5)
    dice = [0.04 / denominators[0] + 0.04 / denominators[1], 0.09 / denominators[0] + 0.09 / denominators[1]]
    ce = [-math.log(0.8), 2 * -math.log(0.7)]
    parts = ce_dice_pixel_parts(logits, labels, class_weights=[1.0, 2.0])
    np.testing.assert_allclose(parts["ce"].flatten().cpu().numpy(), [0.3 * v for v in ce], rtol=1e-12)
    np.testing.assert_allclose(parts["dice"].flatten().cpu().numpy(), [0.7 * v for v in dice], rtol=1e-12)
    expected = sum(0.3 * c + 0.7 * d for c, d in zip(ce, dice, strict=True)) / 2
    assert ce_dice_pixel_loss(logits, labels, class_weights=[1.0, 2.0]).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("decomposition, squared", [("error", True), ("error_linear", False), ("overlap", True)])
@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 3, 3, 4, 5)], ids=["2d", "3d"])
def test_ce_dice_pixel_is_unnormalised_ce_plus_dice(decomposition, squared, shape, device):
    logits, labels = random_inputs(shape, device)
    labels, ignored = with_ignored(labels)
    weights = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64, device=device)
    pixel_dims = tuple(range(1, len(shape) - 1))
    counted = ~ignored

    def expected(z):
        ce = F.cross_entropy(z, labels, weight=weights, ignore_index=IGNORE, reduction="none")  # w_y (-log p_y)
        ce_mean = (ce * counted).sum(dim=pixel_dims) / counted.sum(dim=pixel_dims)
        dice = dice_loss(z, labels, squared=squared, ignore_index=IGNORE, reduction="none")
        return 0.4 * ce_mean + 0.6 * dice

    def actual(z):
        return ce_dice_pixel_loss(z, labels, lambda_ce=0.4, lambda_dc=0.6, dice_decomposition=decomposition,
                                  class_weights=weights, ignore_index=IGNORE, reduction="none")

    assert_same_value_and_gradient(actual, expected, logits)


def test_ce_dice_pixel_paper_literal_is_the_literal_formula(device):
    logits, labels = random_inputs((2, 3, 5, 6), device)

    def literal(z):
        p = z.softmax(dim=1)
        t = F.one_hot(labels, 3).movedim(-1, 1).double()
        denominator = ((p * p).sum(dim=(2, 3)) + (t * t).sum(dim=(2, 3)) + 1e-5).view(2, 3, 1, 1)
        rho = (p * t / denominator).sum(dim=1)
        ce = -(t * p.log()).sum(dim=1)
        return (0.3 * ce + 0.7 * (1 - rho)).mean(dim=(1, 2))

    assert_same_value_and_gradient(
        lambda z: ce_dice_pixel_loss(z, labels, dice_decomposition="paper_literal", reduction="none"), literal, logits
    )


def test_ce_dice_pixel_parts_add_up_and_error_terms_are_non_negative(device):
    logits, labels = random_inputs((2, 3, 5, 6), device, scale=4.0)
    labels, ignored = with_ignored(labels)
    for decomposition in ("error", "error_linear", "overlap", "paper_literal"):
        loss = create_loss("ce_dice_pixel", dice_decomposition=decomposition, ignore_index=IGNORE)
        parts = loss.per_pixel_parts(logits, labels)
        torch.testing.assert_close(parts["ce"] + parts["dice"], loss.per_pixel(logits, labels))
        assert (parts["ce"][ignored] == 0).all() and (parts["dice"][ignored] == 0).all()
        if decomposition.startswith("error"):
            assert (parts["dice"] >= 0).all()
    overlap = ce_dice_pixel_parts(logits, labels, dice_decomposition="overlap", ignore_index=IGNORE)["dice"]
    assert (overlap < 0).any()  # why "error" is the default: the overlap form can go negative


# --------------------------------------------------------------------------- per-term weights, smoothing, GDL + focal


def test_dice_ce_weights_on_both_terms_and_smoothing_match_monai():
    """MONAI's DiceCELoss(weight=w, label_smoothing=e) weighs both terms; ours says which term a weight is for.
    MONAI multiplies the per-class Dice by w and averages, ours normalises by sum(w): equal when sum(w) = C."""
    monai_losses = pytest.importorskip("monai.losses")
    generator = torch.Generator().manual_seed(12)
    logits = torch.randn((1, 3, 6, 7), generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (1, 6, 7), generator=generator)
    weights = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    oracle = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, squared_pred=True, weight=weights,
                                     label_smoothing=0.1)
    expected = oracle(logits, labels.unsqueeze(1))
    ours = dice_ce_loss(logits, labels, class_weights=weights, dice_class_weights=weights, label_smoothing=0.1)
    torch.testing.assert_close(ours, expected.double(), rtol=1e-6, atol=1e-7)
    module = create_loss("dice_ce", class_weights=weights, dice_class_weights=weights, label_smoothing=0.1)
    torch.testing.assert_close(module(logits, labels), ours)
    torch.testing.assert_close(module.per_pixel(logits, labels).mean(), ours)
    # each weight acts on its own term only
    dice_only = dice_ce_loss(logits, labels, dice_class_weights=weights) - cross_entropy(logits, labels)
    torch.testing.assert_close(dice_only, dice_loss(logits, labels, class_weights=weights))


def test_dice_ce_pos_weight_matches_monai_binary():
    monai_losses = pytest.importorskip("monai.losses")
    generator = torch.Generator().manual_seed(13)
    logits = torch.randn((2, 1, 6, 7), generator=generator, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 1, 6, 7), generator=generator).double()
    oracle = monai_losses.DiceCELoss(sigmoid=True, squared_pred=True, weight=torch.tensor([3.0], dtype=torch.float64))
    torch.testing.assert_close(dice_ce_loss(logits, target, pos_weight=3.0), oracle(logits, target))


@pytest.mark.parametrize("mode, channels", [("binary", 1), ("multilabel", 3)])
def test_dice_ce_sigmoid_matches_monai_and_its_own_per_image_path(mode, channels, device):
    monai_losses = pytest.importorskip("monai.losses")
    generator = torch.Generator().manual_seed(15)
    logits = torch.randn((3, channels, 6, 7), generator=generator, dtype=torch.float64).to(device)
    target = torch.randint(0, 2, (3, channels, 6, 7), generator=generator).double().to(device)
    ours = dice_ce_loss(logits, target, mode=mode, lambda_dice=0.7, lambda_ce=1.5)
    if channels == 1:  # MONAI's DiceCELoss takes a BCE for one channel only (softmax CE on more)
        oracle = monai_losses.DiceCELoss(sigmoid=True, squared_pred=True, lambda_dice=0.7, lambda_ce=1.5)
        torch.testing.assert_close(ours, oracle(logits, target))
    dice = monai_losses.DiceLoss(sigmoid=True, squared_pred=True)(logits, target)
    torch.testing.assert_close(ours, 0.7 * dice + 1.5 * F.binary_cross_entropy_with_logits(logits, target))
    per_image = dice_ce_loss(logits, target, mode=mode, lambda_dice=0.7, lambda_ce=1.5, reduction="none")
    torch.testing.assert_close(ours, per_image.mean())
    torch.testing.assert_close(
        dice_ce_loss(logits, target, mode=mode, lambda_dice=0.7, lambda_ce=1.5, reduction="sum"), per_image.sum()
    )


def test_dice_focal_weights_on_both_terms_match_monai():
    monai_losses = pytest.importorskip("monai.losses")
    generator = torch.Generator().manual_seed(14)
    logits = torch.randn((2, 3, 6, 7), generator=generator, dtype=torch.float64)
    onehot = F.one_hot(torch.randint(0, 3, (2, 6, 7), generator=generator), 3).movedim(-1, 1).double()
    weights = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    dice = monai_losses.DiceLoss(softmax=True, squared_pred=True, weight=weights)(logits, onehot)
    focal = monai_losses.FocalLoss(use_softmax=True, weight=weights)(logits, onehot)  # mean over C too: x C
    ours = dice_focal_loss(logits, onehot, alpha=weights.tolist(), dice_class_weights=weights)
    torch.testing.assert_close(ours, dice + 3 * focal)


def test_generalized_dice_focal_matches_monai():
    """MONAI's focal term is sigmoid over the one-hot channels whatever the Dice activation."""
    monai_losses = pytest.importorskip("monai.losses")
    from seglosses import FocalLoss, GeneralizedDiceLoss, generalized_dice_loss
    from seglosses.compound import generalized_dice_focal_loss, generalized_dice_focal_loss_per_pixel

    generator = torch.Generator().manual_seed(15)
    logits = torch.randn((2, 3, 6, 7), generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 6, 7), generator=generator)
    onehot = F.one_hot(labels, 3).movedim(-1, 1).double()
    expected = monai_losses.GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True)(logits, labels.unsqueeze(1))
    mixed = GeneralizedDiceLoss() + FocalLoss(mode="multilabel")
    torch.testing.assert_close(mixed(logits, onehot), expected, rtol=1e-6, atol=1e-7)
    ours = generalized_dice_focal_loss(logits, labels, lambda_focal=0.5)
    torch.testing.assert_close(ours, generalized_dice_loss(logits, labels) + 0.5 * focal_loss(logits, labels))
    torch.testing.assert_close(generalized_dice_focal_loss_per_pixel(logits, labels, lambda_focal=0.5).mean(), ours)
    assert create_loss("GeneralizedDiceFocal", lambda_gdl=2.0).weights == [2.0, 1.0]
