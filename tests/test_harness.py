"""One harness over the registry: every loss in ``list_losses()`` gets the same contract checks.

Cases are built at collection time from ``list_losses()`` x spatial dims (2D, 3D) x every mode the
loss class declares in ``modes`` (kornia ``BaseTester`` / timm ``list_models`` style), so a newly
registered loss is checked without touching this file. Inputs are tiny so the whole file stays fast.

What is checked, one test function each:
the class-level contract, smoke and reductions, target forms, float64 gradcheck, perfect prediction,
non-negativity, empty classes, false positives on an empty target, ignore_index isolation, autocast
and half-precision logits, per_pixel == per_image (value and gradient), module == functional, image
independence, memory layout and dtypes, soft targets and saturated logits, fully ignored images,
non-default common options, bad input messages, unsupported modes, and the registry.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import seglosses
from seglosses import Loss, create_loss, list_losses, loss_class
from seglosses.targets import MODES

BATCH = 2
SPATIAL = {2: (5, 6), 3: (3, 4, 5)}
MULTI_CHANNELS = 3
IGNORE = 255
MARGIN = 20.0  # logit margin of a "perfect" prediction: softmax/sigmoid error about exp(-20) = 2e-9

# Highest default-configuration loss accepted for a perfect prediction at MARGIN, for a loss whose
# value at p = 1 - 2e-9 is not ~0 by construction. Empty: every default reaches < 1e-3 (the slowest,
# exp_log, raises its ~1e-9 errors to the power 0.3 and gives 4e-4).
PERFECT_LOSS_TOLERANCE: dict[str, float] = {}
DEFAULT_PERFECT_LOSS_TOLERANCE = 1e-3


def _robust_t_floor(case: Case, target: Tensor) -> Tensor:
    """The T-loss at zero error: its constant terms (SPEC D.14) at the default nu = e + 1e-8, lambda = 1."""
    nu = torch.tensor(math.e + 1e-8, dtype=torch.float64)
    pixels = torch.tensor(float(math.prod(SPATIAL[case.spatial_dims])), dtype=torch.float64)
    value = torch.lgamma(nu / 2) - torch.lgamma((nu + pixels) / 2) + pixels / 2 * torch.log(math.pi * nu) - pixels / 2
    return value.expand(BATCH)


def _inside_distance_floor(case: Case, target: Tensor, scored_background: bool, value) -> Tensor:
    """Mean over the scored classes and pixels of ``value(mask, d_in)`` at p = t, with d_in scipy's distance
    of a pixel inside the class to its outside (classes that are empty or full handled by ``value``)."""
    from scipy import ndimage

    dense = dense_target(case, target).cpu().numpy() > 0.5
    first = 0 if (scored_background or case.mode != "multiclass") else 1
    floors = []
    for image in dense:
        per_class = []
        for mask in image[first:]:
            inside = ndimage.distance_transform_edt(mask) if mask.any() and not mask.all() else None
            per_class.append(float(value(mask, inside).mean()))
        floors.append(sum(per_class) / len(per_class))
    return torch.tensor(floors, dtype=torch.float64)


def _boundary_floor(case: Case, target: Tensor) -> Tensor:
    """Kervadec's boundary loss at p = t: the mean of 1 - d_in over each foreground class."""
    return _inside_distance_floor(case, target, False, lambda m, d: 0.0 * m if d is None else (1.0 - d) * m)


def _region_wise_floor(case: Case, target: Tensor) -> Tensor:
    """The region-wise loss at p = t: the mean of -d_in / max d_in over each class (-1 for a full class)."""
    return _inside_distance_floor(case, target, True, lambda m, d: -1.0 * m if d is None else -d / d.max() * m)


def _rmi_floor(case: Case, target: Tensor) -> Tensor:
    """The RMI loss (SPEC D.13) at the perfect logits, by numpy: 0.5 * the class-summed BCE + 0.5 * the
    class-summed 0.5 log det(Sigma_Y|P + eps I) / 9 of the 3x3 neighbourhoods (no down-sampling, as
    HARNESS_OPTIONS asks). Probabilities are sigmoids, so multiclass "perfect" logits (0 off the true
    class) leave p = 1/2 there: the BCE part is then (C - 1) log 2 per pixel."""
    dense = dense_target(case, target).cpu().numpy()
    probs = 1.0 / (1.0 + np.exp(-perfect_logits(case, target).cpu().numpy()))
    bce = -(dense * np.log(probs) + (1 - dense) * np.log1p(-probs)).sum(axis=1)
    radius, eps, spatial = 3, 5e-4, dense.shape[2:]
    inner = [n - radius + 1 for n in spatial]
    floors = []
    for image in range(dense.shape[0]):
        rmi = 0.0
        for y, p in zip(dense[image], probs[image] + 1e-6, strict=True):
            offsets = list(np.ndindex(*(radius,) * len(spatial)))
            windows = [tuple(slice(o, o + n) for o, n in zip(offset, inner, strict=True)) for offset in offsets]
            la = np.stack([y[w].ravel() for w in windows])
            pr = np.stack([p[w].ravel() for w in windows])
            la, pr = la - la.mean(axis=1, keepdims=True), pr - pr.mean(axis=1, keepdims=True)
            identity = eps * np.eye(len(offsets))
            conditional = la @ la.T - la @ pr.T @ np.linalg.solve(pr @ pr.T + identity, pr @ la.T)
            rmi += 0.5 * np.linalg.slogdet(conditional + identity)[1] / len(offsets)
        floors.append(0.5 * bce[image].mean() + 0.5 * rmi)
    return torch.tensor(floors, dtype=torch.float64)


# Losses whose minimum (a perfect prediction) is not 0 by definition, with the value they reach there:
# the perfect-prediction test checks that value, the lower-bound test checks random inputs stay above it.
PERFECT_LOSS_VALUE: dict[str, Callable[[Case, Tensor], Tensor]] = {
    "robust_t": _robust_t_floor,  # a negative log-likelihood
    "boundary": _boundary_floor,  # probabilities weighted by a signed distance, negative inside
    "region_wise": _region_wise_floor,  # probabilities weighted by a rectified map, negative inside
    "rmi": _rmi_floor,  # a log-determinant, about 0.5 log(eps) per class at a perfect prediction
}

# Constructor arguments for registered losses that cannot be built with defaults alone (none today).
# A loss that needs some and is missing here fails test_class_contract with the missing argument's name.
REQUIRED_ARGUMENTS: dict[str, dict] = {}

# Options the harness passes to losses whose defaults do not fit its tiny inputs, with the reason.
HARNESS_OPTIONS: dict[str, dict] = {
    "rmi": {"downsample": 1},  # 4x pooling would leave no 3x3 neighbourhood in a 5x6 image
    "active_boundary": {"max_boundary_fraction": 0.3},  # 1% of 30 pixels is no predicted boundary at all
}

# Losses that only see a target's boundaries, with the reason: they get targets made of random boxes
# (random pixel labels make nearly every pixel a boundary pixel, where these losses are 0).
BOX_TARGETS: dict[str, str] = {
    "active_boundary": "weighs pixels by their distance to the boundary, 0 on it and beside it",
}

# Options for the gradient check of losses whose default gradient is by design not the derivative of their
# value (a stop-gradient), with the reason; the default gradient is tested in the loss's own test file.
GRADCHECK_OPTIONS: dict[str, dict] = {
    "active_boundary": {"detach_neighbours": False},  # the reference detaches the neighbours' predictions
}


def _active_boundary_perfect_bound(case: Case) -> float:
    """At a perfect prediction the predicted boundary is the true one, dilated 3x3: every kept pixel lies
    within sqrt(2) of the boundary (weight at most (sqrt(2) - 1) / 20), and its direction logits are KL
    divergences of at most about MARGIN per class (channel), so its cross-entropy is at most their spread
    plus log 8. Label smoothing keeps it above 0: the loss is small there, but not 0 and not minimal."""
    spread = MARGIN * (1 if case.mode == "multiclass" else case.channels) + 1.0
    return (math.sqrt(2.0) - 1.0) / 20.0 * (spread + math.log(8.0))


# Losses that a perfect prediction does not minimise, with an upper bound of their value there: the
# perfect-prediction test checks 0 <= value <= bound instead of value ~ 0 and value <= random.
PERFECT_LOSS_BOUND: dict[str, Callable[[Case], float]] = {
    "active_boundary": _active_boundary_perfect_bound,
}

def _class_aligned_features(case: Case, target: Tensor) -> dict:
    """Decoder features (B, 2, *S) that separate the classes perfectly: the class's vertex of a regular
    triangle (binary: two opposite vectors), zero for out-of-range (ignored) labels. Built from the
    target's classes alone, so every form of a target, a slice of the batch or a flip gets its own."""
    spatial_dims = case.spatial_dims
    classes = target
    if target.ndim == spatial_dims + 2:  # (B, 1, *S) labels, or a dense (B, C, *S) target
        classes = target[:, 0] if target.shape[1] == 1 and case.mode != "binary" else target.argmax(dim=1)
        if case.mode == "binary":
            classes = (target[:, 0] > 0.5).long()
    count = 2 if case.mode == "binary" else case.channels
    angles = torch.arange(count, dtype=torch.float64) * (2 * math.pi / count)
    vertices = torch.cat([torch.stack([angles.cos(), angles.sin()], dim=1), torch.zeros(1, 2, dtype=torch.float64)])
    index = classes.long().cpu()
    index = torch.where((index >= 0) & (index < count), index, count)
    return {"features": vertices[index].movedim(-1, 1).to(target.device)}


# Inputs beyond (logits, target) that a loss needs (EXTRA_INPUTS), built from the case and the target.
EXTRA_INPUTS: dict[str, Callable[[Case, Tensor], dict]] = {
    "conditional_boundary": _class_aligned_features,  # decoder features (B, F, *S)
}


def extra(case: Case, target: Tensor) -> dict:
    """The extra keyword inputs of ``case``'s loss for ``target`` (none for most losses)."""
    return EXTRA_INPUTS[case.name](case, target) if case.name in EXTRA_INPUTS else {}


# Losses whose logits are not class scores: their channel count (LOGIT_CHANNELS) and perfect logits
# (PERFECT_LOGITS), built here independently of the library (scipy's distance transform).
LOGIT_CHANNELS: dict[str, int] = {
    "boundary_aware": 5,  # one sigmoid channel per distance bin (default bins = max_distance = 5)
}


def _boundary_aware_perfect_logits(case: Case, target: Tensor, margin: float) -> Tensor:
    """+-margin on the bin maps of each mask: inside, the bin of min(ceil(d), 5), d scipy's distance to
    the outside (infinite for a full mask); outside, no bin."""
    from scipy import ndimage

    masks = dense_target(case, target)[:, 0].cpu().numpy() > 0.5
    maps = torch.zeros(case.logits_shape, dtype=torch.float64)
    for image, mask in enumerate(masks):
        distance = ndimage.distance_transform_edt(mask) if not mask.all() else mask * math.inf
        truncated = np.minimum(np.ceil(distance), 5)
        for k in range(5):
            maps[image, k] = torch.from_numpy(mask & (truncated == k + 1))
    return (margin * (2.0 * maps - 1.0)).to(target.device)


PERFECT_LOGITS: dict[str, Callable[[Case, Tensor, float], Tensor]] = {
    "boundary_aware": _boundary_aware_perfect_logits,
}


# Functional counterparts whose name does not follow "XyzLoss -> xyz_loss" (checked in the loss's own module).
FUNCTION_OF_MODULE: dict[str, str] = {
    "CrossEntropyLoss": "cross_entropy",
    "TopKCrossEntropyLoss": "topk_cross_entropy",
    "TopKDiceLoss": "topk_dice_loss",
    "BoundaryDoULoss": "boundary_dou_loss",
    "ClDiceLoss": "cldice_loss",
    "InverseFormLoss": "inverseform_loss",
}

# Losses that by definition do not see a class absent from the target (its distance map is 0), with the
# reason; the false-positive test checks that they indeed ignore it rather than that they penalise it.
BLIND_TO_ABSENT_CLASSES: dict[str, str] = {
    "boundary": "Kervadec's map of an absent class is 0 (SPEC D.15): used alone it collapses, combine it with Dice",
    "active_boundary": "without a ground-truth boundary there is no direction to move a predicted one (SPEC D.18): "
    "it is an auxiliary term beside CE",
}

# Losses that sort or select pixels (lovasz, topk_ce, topk_dice) are only piecewise smooth. gradcheck
# still runs on them, unchanged: in these seeded inputs the smallest gap between two ranked values
# (errors |p - t|, hinge errors, pixel CE, p * t) is 5e-6, above what gradcheck's 1e-6 perturbation
# can move them, so no kink is crossed; the inputs are fixed, so the check cannot flake.


# --------------------------------------------------------------------------- cases


def _declared_modes(cls: type) -> tuple[str, ...]:
    """The modes of a loss class; read from an instance when the class exposes a property instead
    (test_class_contract then fails: the contract asks for a class attribute)."""
    modes = cls.modes
    if isinstance(modes, property):
        modes = cls(**REQUIRED_ARGUMENTS.get(cls.registry_name, {})).modes
    return tuple(modes)


@dataclass(frozen=True)
class Case:
    name: str
    spatial_dims: int
    mode: str

    @property
    def cls(self) -> type:
        return loss_class(self.name)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "binary" else MULTI_CHANNELS

    @property
    def logits_shape(self) -> tuple[int, ...]:
        return (BATCH, LOGIT_CHANNELS.get(self.name, self.channels), *SPATIAL[self.spatial_dims])

    @property
    def target_shape(self) -> tuple[int, ...]:
        """The shape of a dense target: one channel per class (or sigmoid channel)."""
        return (BATCH, self.channels, *SPATIAL[self.spatial_dims])

    @property
    def pixel_dims(self) -> tuple[int, ...]:
        return tuple(range(1, self.spatial_dims + 1))

    def __str__(self) -> str:
        return f"{self.name}-{self.spatial_dims}d-{self.mode}"


def _cases(spatial_dims: tuple[int, ...] = (2, 3)) -> list[Case]:
    """Every loss x the spatial dims it declares (``spatial_dims``; 2D-only losses skip 3D) x its modes."""
    return [
        Case(name, dims, mode)
        for name in list_losses()
        for dims in spatial_dims
        if dims in tuple(loss_class(name).spatial_dims)
        for mode in _declared_modes(loss_class(name))
    ]


ALL_CASES = _cases()
CASES_2D = _cases((2,))
case_params = pytest.mark.parametrize("case", ALL_CASES, ids=str)
case_params_2d = pytest.mark.parametrize("case", CASES_2D, ids=str)
loss_names = pytest.mark.parametrize("name", list_losses())


def accepts(name: str, option: str) -> bool:
    """Whether the loss's constructor takes ``option`` (the common options are optional per loss)."""
    return option in inspect.signature(loss_class(name).__init__).parameters


def build(case: Case, **options) -> Loss:
    """The loss of ``case`` in its default configuration, told the mode when it takes one."""
    if accepts(case.name, "mode"):
        options.setdefault("mode", case.mode)
    options = {**HARNESS_OPTIONS.get(case.name, {}), **options}
    return create_loss(case.name, **REQUIRED_ARGUMENTS.get(case.name, {}), **options)


def requires_option(case: Case, option: str) -> None:
    if not accepts(case.name, option):
        pytest.skip(f"{case.name} has no `{option}` option")


# --------------------------------------------------------------------------- inputs


def random_logits(case: Case, device: torch.device, *, seed: int = 0, dtype=torch.float64, scale=2.0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(case.logits_shape, generator=generator, dtype=torch.float64)).to(device, dtype)


def _block_target(case: Case, device: torch.device, generator: torch.Generator) -> Tensor:
    """Like random_target, but every class (channel) is one random box, so that boundaries are lines."""
    spatial = SPATIAL[case.spatial_dims]
    multilabel = case.mode == "multilabel"
    target = torch.zeros((BATCH, case.channels, *spatial) if multilabel else (BATCH, *spatial), dtype=torch.long)
    for image in range(BATCH):
        for label in range(1, 2 if case.mode == "binary" else case.channels + multilabel):
            box = []
            for size in spatial:
                start = int(torch.randint(0, size // 2, (1,), generator=generator))
                box.append(slice(start, start + int(torch.randint(2, size - start + 1, (1,), generator=generator))))
            if multilabel:
                target[(image, label - 1, *box)] = 1
            else:
                target[(image, *box)] = label
    return (target.double() if multilabel else target).to(device)


def random_target(case: Case, device: torch.device, *, seed: int = 1) -> Tensor:
    """Labels (B, *S) for multiclass and binary, a dense 0/1 float target (B, C, *S) for multilabel
    (random boxes instead of random pixels for the losses in BOX_TARGETS)."""
    generator = torch.Generator().manual_seed(seed)
    if case.name in BOX_TARGETS:
        return _block_target(case, device, generator)
    if case.mode == "multilabel":
        return torch.randint(0, 2, case.target_shape, generator=generator).double().to(device)
    high = 2 if case.mode == "binary" else case.channels
    return torch.randint(0, high, (BATCH, *SPATIAL[case.spatial_dims]), generator=generator).to(device)


def dense_target(case: Case, target: Tensor) -> Tensor:
    """The one-hot (B, C, *S) form of a target given as labels (or the dense target itself)."""
    if case.mode == "multilabel":
        return target.double()
    if case.mode == "binary":
        return target.unsqueeze(1).double()
    return F.one_hot(target, case.channels).movedim(-1, 1).double()


def perfect_logits(case: Case, target: Tensor, margin: float = MARGIN) -> Tensor:
    """Logits that put ``margin`` on the true class (softmax) or +-margin per channel (sigmoid); a loss
    whose logits are not class scores declares its own in PERFECT_LOGITS."""
    if case.name in PERFECT_LOGITS:
        return PERFECT_LOGITS[case.name](case, target, margin)
    dense = dense_target(case, target)
    return margin * dense if case.mode == "multiclass" else margin * (2.0 * dense - 1.0)


def background_target(case: Case, device: torch.device) -> Tensor:
    """A target with no foreground anywhere: label 0 everywhere, or all-zero channels."""
    if case.mode == "multilabel":
        return torch.zeros(case.target_shape, dtype=torch.float64, device=device)
    return torch.zeros((BATCH, *SPATIAL[case.spatial_dims]), dtype=torch.long, device=device)


def ignored_pixels(case: Case, device: torch.device) -> Tensor:
    """(B, *S) mask of about a third of the pixels of each image (never all of them)."""
    generator = torch.Generator().manual_seed(7)
    mask = torch.rand((BATCH, *SPATIAL[case.spatial_dims]), generator=generator) < 0.35
    flat = mask.view(BATCH, -1)
    flat[:, 0], flat[:, 1] = True, False
    return mask.to(device)


def with_ignored(case: Case, target: Tensor, ignored: Tensor) -> Tensor:
    """``target`` with ``IGNORE`` at the ignored pixels; a dense target marks it in channel 0 only,
    which is enough (a pixel is ignored when any channel holds ignore_index)."""
    target = target.clone()
    if case.mode == "multilabel":
        target[:, 0][ignored] = IGNORE
    else:
        target[ignored] = IGNORE
    return target


def image_weights(device: torch.device) -> Tensor:
    """Unequal per-image upstream gradients, so that a mix-up between images shows."""
    return torch.tensor([0.7, 1.9], dtype=torch.float64, device=device)


def gradient(loss_fn: Callable[[Tensor], Tensor], logits: Tensor) -> Tensor:
    logits = logits.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(logits), logits)
    return grad


CONFIGURATIONS = ["defaults", "ignore", "weighted-foreground", "flipped-batch-ignore"]


@dataclass
class Configured:
    """A loss configuration and a target to go with it; ``ignored`` marks the (B, *S) ignored pixels."""

    options: dict
    target: Tensor
    ignored: Tensor


def configure(case: Case, configuration: str, device: torch.device) -> Configured:
    """defaults; ignore_index on a third of the pixels; non-uniform class weights and no background
    (whichever of the two the loss takes); or the non-default ``batch`` pooling, with ignored pixels."""
    target = random_target(case, device)
    ignored = torch.zeros((BATCH, *SPATIAL[case.spatial_dims]), dtype=torch.bool, device=device)
    options: dict = {}
    if configuration == "flipped-batch-ignore":
        requires_option(case, "batch")
        options["batch"] = not inspect.signature(case.cls.__init__).parameters["batch"].default
    if configuration in ("ignore", "flipped-batch-ignore"):
        requires_option(case, "ignore_index")
        options["ignore_index"] = IGNORE
        ignored = ignored_pixels(case, device)
        target = with_ignored(case, target, ignored)
    elif configuration == "weighted-foreground":
        if accepts(case.name, "class_weights"):
            options["class_weights"] = [0.5, 1.0, 2.0][: case.channels]
        if accepts(case.name, "include_background") and case.channels > 1:
            options["include_background"] = False
        if not options:
            pytest.skip(f"{case.name} takes neither `class_weights` nor `include_background` here")
    return Configured(options, target, ignored)


# --------------------------------------------------------------------------- contract and smoke


@loss_names
def test_class_contract(name: str) -> None:
    cls = loss_class(name)
    assert issubclass(cls, Loss)
    assert cls.registry_name == name
    assert isinstance(cls.modes, tuple), f"{cls.__name__}.modes must be a class-level tuple, got {cls.modes!r}"
    assert cls.modes and set(cls.modes) <= set(MODES)
    assert isinstance(cls.spatial_dims, tuple) and cls.spatial_dims and set(cls.spatial_dims) <= {2, 3}
    assert isinstance(cls.has_per_pixel, bool), f"{cls.__name__}.has_per_pixel must be a class-level bool"
    assert accepts(name, "reduction"), f"{cls.__name__} must take `reduction`"
    loss = create_loss(name, **REQUIRED_ARGUMENTS.get(name, {}))
    assert loss.reduction == "mean"
    repr(loss)


@case_params
def test_smoke_and_reductions(case: Case, device: torch.device) -> None:
    logits, target = random_logits(case, device, dtype=torch.float32), random_target(case, device)
    value = build(case)(logits, target, **extra(case, target))
    assert value.shape == () and torch.isfinite(value)
    per_image = build(case, reduction="none")(logits, target, **extra(case, target))
    assert per_image.shape == (BATCH,)
    total = build(case, reduction="sum")(logits, target, **extra(case, target))
    torch.testing.assert_close(total, BATCH * value)
    torch.testing.assert_close(value, per_image.mean())
    torch.testing.assert_close(build(case).per_image(logits, target, **extra(case, target)), per_image)


@case_params
def test_target_forms_agree(case: Case, device: torch.device) -> None:
    """Labels (B, *S), labels (B, 1, *S) and the dense one-hot target give the same loss."""
    loss = build(case, reduction="none")
    logits, target = random_logits(case, device), random_target(case, device)
    reference = loss(logits, target, **extra(case, target))
    if case.mode == "multilabel":
        forms = [target.long(), target.float()]
    else:
        forms = [target.unsqueeze(1), dense_target(case, target)]
    for form in forms:
        torch.testing.assert_close(loss(logits, form, **extra(case, form)), reference)


@case_params
@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_gradcheck_float64(case: Case, configuration: str, device: torch.device) -> None:
    configured = configure(case, configuration, device)
    loss = build(case, reduction="none", **GRADCHECK_OPTIONS.get(case.name, {}), **configured.options)
    target = configured.target
    logits = random_logits(case, device).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: loss(z, target, **extra(case, target)), (logits,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True
    )
    assert torch.isfinite(gradient(lambda z: loss(z, target, **extra(case, target)).sum(), logits)).all()


@loss_names
def test_binary_equals_multilabel_with_one_channel(name: str, device: torch.device) -> None:
    """Both are a sigmoid per channel: with a single channel they are the same loss."""
    if not {"binary", "multilabel"} <= set(_declared_modes(loss_class(name))):
        pytest.skip(f"{name} lacks binary or multilabel mode")
    case = Case(name, 2, "binary")
    logits, target = random_logits(case, device), dense_target(case, random_target(case, device))
    torch.testing.assert_close(
        build(case, reduction="none")(logits, target, **extra(case, target)),
        build(Case(name, 2, "multilabel"), reduction="none")(logits, target, **extra(case, target)),
    )


# --------------------------------------------------------------------------- values


@case_params
def test_perfect_prediction_is_near_zero(case: Case, device: torch.device) -> None:
    loss = build(case, reduction="none")
    target = random_target(case, device)
    perfect = loss(perfect_logits(case, target), target, **extra(case, target))
    random = loss(random_logits(case, device), target, **extra(case, target))
    if case.name in PERFECT_LOSS_BOUND:
        bound = PERFECT_LOSS_BOUND[case.name](case)
        assert ((perfect >= 0) & (perfect <= bound)).all(), f"perfect prediction gives {perfect.tolist()} > {bound}"
        return
    # Compared over the batch: a batch-pooled loss (topk_ce, batch Dice) gives each image only its share.
    assert perfect.mean() <= random.mean()
    tolerance = PERFECT_LOSS_TOLERANCE.get(case.name, DEFAULT_PERFECT_LOSS_TOLERANCE)
    floor = PERFECT_LOSS_VALUE[case.name](case, target).to(perfect) if case.name in PERFECT_LOSS_VALUE else 0.0
    assert ((perfect - floor).abs() < tolerance).all(), f"perfect prediction gives {perfect.tolist()}"


@case_params
def test_non_negative_on_random_inputs(case: Case, device: torch.device) -> None:
    loss = build(case, reduction="none")
    for seed in range(3):
        target = random_target(case, device, seed=seed + 10)
        inputs = extra(case, target)
        floor = loss(perfect_logits(case, target), target, **inputs) if case.name in PERFECT_LOSS_VALUE else 0.0
        value = loss(random_logits(case, device, seed=seed, scale=4.0), target, **inputs)
        assert (value >= floor - 1e-7).all(), f"seed {seed}: {value.tolist()}"


def _targets_with_empty_classes(case: Case, device: torch.device) -> Tensor:
    """Image 0 lacks one class (multiclass: class 2; binary: background; multilabel: channel 2);
    image 1 is all background (no foreground at all)."""
    target = random_target(case, device)
    if case.mode == "multiclass":
        target[0] = target[0].clamp_max(1)
        target[1] = 0
    elif case.mode == "binary":
        target[0] = 1
        target[1] = 0
    else:
        target[0, 2] = 0
        target[1] = 0
    return target


@case_params
@pytest.mark.parametrize("prediction", ["random", "perfect"])
def test_empty_classes_are_finite(case: Case, prediction: str, device: torch.device) -> None:
    loss = build(case, reduction="none")
    target = _targets_with_empty_classes(case, device)
    logits = random_logits(case, device) if prediction == "random" else perfect_logits(case, target)
    value = loss(logits, target, **extra(case, target))
    assert torch.isfinite(value).all()
    inputs = extra(case, target)
    assert torch.isfinite(gradient(lambda z: (loss(z, target, **inputs) * image_weights(device)).sum(), logits)).all()


@case_params
def test_empty_target_with_false_positives_is_penalised(case: Case, device: torch.device) -> None:
    loss = build(case, reduction="none")
    target = background_target(case, device)
    clean = perfect_logits(case, target)
    with_false_positives = clean.clone()
    # A confident foreground block over the first third of each image (class/channel 1, or the binary channel).
    block = (slice(None), slice(0, SPATIAL[case.spatial_dims][0] // 3 + 1))
    if case.mode == "multiclass":
        with_false_positives[:, 0][block], with_false_positives[:, 1][block] = 0.0, MARGIN
    elif case.mode == "binary":
        with_false_positives[:, 0][block] = MARGIN
    else:
        with_false_positives[:, 1][block] = MARGIN
    # Over the batch: a batch-pooled loss may put all of the penalty on one image's share.
    inputs = extra(case, target)
    penalised, unpenalised = loss(with_false_positives, target, **inputs).mean(), loss(clean, target, **inputs).mean()
    if case.name in BLIND_TO_ABSENT_CLASSES:
        torch.testing.assert_close(penalised, unpenalised)
        return
    assert penalised > unpenalised + 1e-3, f"{penalised.item()} vs {unpenalised.item()}"


# --------------------------------------------------------------------------- ignore_index


@case_params
def test_ignore_index_isolates_ignored_pixels(case: Case, device: torch.device) -> None:
    """Logits at ignored pixels change neither the value nor the gradient elsewhere; their gradient is 0."""
    requires_option(case, "ignore_index")
    loss = build(case, ignore_index=IGNORE, reduction="none")
    ignored = ignored_pixels(case, device)
    target = with_ignored(case, random_target(case, device), ignored)
    logits = random_logits(case, device)
    changed = logits.clone()
    ignored_channels = ignored.unsqueeze(1).expand_as(logits)
    changed[ignored_channels] = random_logits(case, device, seed=99, scale=10.0)[ignored_channels]

    inputs = extra(case, target)
    torch.testing.assert_close(loss(changed, target, **inputs), loss(logits, target, **inputs))
    if case.mode == "multilabel":  # the other channels of an ignored pixel count for nothing either
        relabelled = target.clone()
        relabelled[:, 1:][ignored.unsqueeze(1).expand_as(target[:, 1:])] = 1.0
        torch.testing.assert_close(loss(logits, relabelled, **extra(case, relabelled)), loss(logits, target, **inputs))
    weighted = lambda z: (loss(z, target, **inputs) * image_weights(device)).sum()  # noqa: E731
    grad, grad_changed = gradient(weighted, logits), gradient(weighted, changed)
    torch.testing.assert_close(grad_changed[~ignored_channels], grad[~ignored_channels])
    assert (grad[ignored_channels] == 0).all() and (grad_changed[ignored_channels] == 0).all()


# --------------------------------------------------------------------------- precision


@case_params
def test_autocast_and_half_logits(case: Case, device: torch.device) -> None:
    loss = build(case)
    logits, target = random_logits(case, device, dtype=torch.float32), random_target(case, device)
    reference = loss(logits, target, **extra(case, target))

    def assert_close_to_reference(value: Tensor) -> None:
        assert torch.isfinite(value)
        torch.testing.assert_close(value.float(), reference, rtol=1e-2, atol=1e-3)

    autocast_dtypes = [torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    for dtype in autocast_dtypes:
        with torch.autocast(device.type, dtype=dtype):
            assert_close_to_reference(loss(logits, target, **extra(case, target)))
    for dtype in (torch.bfloat16, torch.float16):
        half_logits = logits.to(dtype).requires_grad_(True)
        value = loss(half_logits, target, **extra(case, target))
        assert_close_to_reference(value)
        value.backward()
        assert half_logits.grad.dtype == dtype and torch.isfinite(half_logits.grad).all()


# --------------------------------------------------------------------------- granularities


@case_params
@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_per_pixel_mean_is_per_image(case: Case, configuration: str, device: torch.device) -> None:
    configured = configure(case, configuration, device)
    loss, target, ignored = build(case, **configured.options), configured.target, configured.ignored
    logits = random_logits(case, device)
    if not type(loss).has_per_pixel:
        with pytest.raises(TypeError, match=type(loss).__name__):
            loss.per_pixel(logits, target, **extra(case, target))
        return

    per_pixel = loss.per_pixel(logits, target, **extra(case, target))
    assert per_pixel.shape == (BATCH, *SPATIAL[case.spatial_dims])
    assert (per_pixel[ignored] == 0).all()
    counted = (~ignored).sum(dim=case.pixel_dims).double()

    def image_mean_of_per_pixel(z: Tensor) -> Tensor:
        return loss.per_pixel(z, target, **extra(case, target)).sum(dim=case.pixel_dims) / counted

    per_image = loss.per_image(logits, target, **extra(case, target))
    torch.testing.assert_close(image_mean_of_per_pixel(logits), per_image, rtol=1e-10, atol=1e-12)
    weights = image_weights(device)
    torch.testing.assert_close(
        gradient(lambda z: (image_mean_of_per_pixel(z) * weights).sum(), logits),
        gradient(lambda z: (loss.per_image(z, target, **extra(case, target)) * weights).sum(), logits),
        rtol=1e-9,
        atol=1e-12,
    )


def _snake_case(camel: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", camel).lower()


def functional_of(cls: type) -> Callable[..., Tensor]:
    """The function doing the maths of a loss module: in the same module, named by FUNCTION_OF_MODULE
    or by the convention ``XyzLoss -> xyz_loss``."""
    module = sys.modules[cls.__module__]
    stem = cls.__name__.removesuffix("Loss")
    candidates = [FUNCTION_OF_MODULE.get(cls.__name__), f"{_snake_case(stem)}_loss", _snake_case(stem)]
    for candidate in filter(None, candidates):
        if callable(getattr(module, candidate, None)):
            return getattr(module, candidate)
    raise AssertionError(f"no functional counterpart of {cls.__name__} in {module.__name__} (tried {candidates})")


@case_params
@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_module_matches_functional(case: Case, configuration: str, device: torch.device) -> None:
    configured = configure(case, configuration, device)
    loss, target = build(case, **configured.options), configured.target
    function = functional_of(type(loss))
    logits = random_logits(case, device)
    inputs = extra(case, target)
    torch.testing.assert_close(
        loss.per_image(logits, target, **inputs), function(logits, target, **loss.options, reduction="none", **inputs)
    )
    torch.testing.assert_close(loss(logits, target, **inputs), function(logits, target, **loss.options, **inputs))


def _pools_the_batch(case: Case) -> bool:
    """Whether the default configuration pools statistics over the batch (e.g. topk_ce ranks over it)."""
    batch = inspect.signature(case.cls.__init__).parameters.get("batch")
    return batch is not None and batch.default is True


@case_params
def test_images_are_independent(case: Case, device: torch.device) -> None:
    """An image's loss does not depend on the other images of the batch, nor on its position in it."""
    if _pools_the_batch(case):
        pytest.skip(f"{case.name} pools its statistics over the batch by default")
    loss = build(case, reduction="none")
    logits, target = random_logits(case, device), random_target(case, device)
    batched = loss(logits, target, **extra(case, target))
    torch.testing.assert_close(loss(logits.flip(0), target.flip(0), **extra(case, target.flip(0))), batched.flip(0))
    for image in range(BATCH):
        one = target[image : image + 1]
        torch.testing.assert_close(loss(logits[image : image + 1], one, **extra(case, one)), batched[image : image + 1])


@case_params
def test_layout_and_dtype(case: Case, device: torch.device) -> None:
    """Non-contiguous inputs (channels-last logits, strided views) give the same value; the output keeps
    float32/float64; a call does not mutate the module's configuration."""
    loss = build(case, reduction="none")
    logits, target = random_logits(case, device), random_target(case, device)
    channels_last_logits = logits.movedim(1, -1).contiguous().movedim(-1, 1)
    strided_logits = torch.stack([logits, -logits], dim=-1)[..., 0]
    strided_target = torch.stack([target, target], dim=-1)[..., 0]
    assert not strided_logits.is_contiguous() and not strided_target.is_contiguous()
    configuration_before = repr(loss)
    reference = loss(logits, target, **extra(case, target))
    torch.testing.assert_close(loss(channels_last_logits, strided_target, **extra(case, strided_target)), reference)
    torch.testing.assert_close(loss(strided_logits, target, **extra(case, target)), reference)
    assert repr(loss) == configuration_before
    assert reference.dtype == torch.float64
    assert loss(logits.float(), target, **extra(case, target)).dtype == torch.float32


@case_params
def test_soft_targets_and_extreme_logits_are_finite(case: Case, device: torch.device) -> None:
    """Soft (non one-hot) dense targets and saturated float32 logits give finite values and gradients."""
    loss = build(case, reduction="none")
    generator = torch.Generator().manual_seed(5)
    soft = torch.rand(case.target_shape, generator=generator, dtype=torch.float64).to(device)
    if case.mode == "multiclass":
        soft = soft.softmax(dim=1)
    extreme = random_logits(case, device, dtype=torch.float32, scale=60.0)
    for logits, target in ((random_logits(case, device), soft), (extreme, random_target(case, device))):
        value = loss(logits, target, **extra(case, target))
        assert torch.isfinite(value).all(), f"{value.tolist()}"
        inputs = extra(case, target)
        grad = gradient(lambda z, target=target, inputs=inputs: loss(z, target, **inputs).sum(), logits)
        assert torch.isfinite(grad).all()


@case_params
def test_fully_ignored_image_is_finite(case: Case, device: torch.device) -> None:
    requires_option(case, "ignore_index")
    loss = build(case, ignore_index=IGNORE, reduction="none")
    ignored = torch.zeros((BATCH, *SPATIAL[case.spatial_dims]), dtype=torch.bool, device=device)
    ignored[1] = True
    target = with_ignored(case, random_target(case, device), ignored)
    logits = random_logits(case, device)
    assert torch.isfinite(loss(logits, target, **extra(case, target))).all()
    grad = gradient(lambda z: loss(z, target, **extra(case, target)).sum(), logits)
    assert torch.isfinite(grad).all() and (grad[1] == 0).all()


@case_params_2d
def test_common_options_behave(case: Case, device: torch.device) -> None:
    """Uniform class weights change nothing; include_background=False runs and stays finite."""
    accepts_weights = accepts(case.name, "class_weights")
    accepts_background = accepts(case.name, "include_background") and case.channels > 1
    if not (accepts_weights or accepts_background):
        pytest.skip(f"{case.name} takes neither `class_weights` nor `include_background`")
    logits, target = random_logits(case, device), random_target(case, device)
    inputs = extra(case, target)
    reference = build(case, reduction="none")(logits, target, **inputs)
    if accepts_weights:
        uniform = build(case, class_weights=[1.0] * case.channels, reduction="none")(logits, target, **inputs)
        torch.testing.assert_close(uniform, reference)
        as_tensor = torch.tensor([0.5, 1.0, 2.0][: case.channels], device=device)
        torch.testing.assert_close(
            build(case, class_weights=as_tensor, reduction="none")(logits, target, **inputs),
            build(case, class_weights=as_tensor.tolist(), reduction="none")(logits, target, **inputs),
        )
    if accepts_background:
        foreground_only = build(case, include_background=False, reduction="none")
        assert torch.isfinite(foreground_only(logits, target, **inputs)).all()


# --------------------------------------------------------------------------- bad input

BAD_INPUTS = [
    "logits_ndim",
    "label_out_of_range",
    "float_labels",
    "shape_mismatch",
    "nan_logits",
    "reduction",
    "class_weights",
]
ARGUMENT_OF_BAD_INPUT = {
    "logits_ndim": "logits",
    "label_out_of_range": "target",
    "float_labels": "target",
    "shape_mismatch": "target",
    "nan_logits": "logits",
    "reduction": "reduction",
    "class_weights": "class_weights",
}


@case_params_2d
@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_bad_input_names_the_argument(case: Case, bad: str, device: torch.device) -> None:
    if bad == "class_weights":
        requires_option(case, "class_weights")
    logits, target = random_logits(case, device, dtype=torch.float32), random_target(case, device)
    options = {}
    if bad == "logits_ndim":
        logits = logits[:, :, 0]
    elif bad == "label_out_of_range":
        target = target.clone()
        target.view(-1)[0] = 2 if case.mode != "multiclass" else case.channels
    elif bad == "float_labels":
        target = torch.rand((BATCH, *SPATIAL[case.spatial_dims]), device=device)
    elif bad == "shape_mismatch":
        target = target[..., :-1]
    elif bad == "nan_logits":
        logits = logits.clone()
        logits.view(-1)[3] = float("nan")
    elif bad == "reduction":
        options["reduction"] = "avg"
    elif bad == "class_weights":
        options["class_weights"] = [1.0] * (case.channels + 1)
    with pytest.raises((ValueError, TypeError), match=f"`{ARGUMENT_OF_BAD_INPUT[bad]}`"):
        build(case, **options)(logits, target, **extra(case, target))


@loss_names
def test_unsupported_mode_is_refused(name: str, device: torch.device) -> None:
    unsupported = [mode for mode in MODES if mode not in _declared_modes(loss_class(name))]
    if not unsupported:
        pytest.skip(f"{name} supports every mode")
    for mode in unsupported:
        case = Case(name, 2, mode)
        with pytest.raises((ValueError, TypeError), match="`mode`"):
            target = random_target(case, device)
            build(case)(random_logits(case, device), target, **extra(case, target))


@loss_names
def test_unsupported_spatial_dims_are_refused(name: str, device: torch.device) -> None:
    """A 2D-only (or 3D-only) loss refuses the other input with a ValueError naming `logits`."""
    unsupported = [dims for dims in (2, 3) if dims not in loss_class(name).spatial_dims]
    if not unsupported:
        pytest.skip(f"{name} supports 2D and 3D")
    for dims in unsupported:
        case = Case(name, dims, _declared_modes(loss_class(name))[0])
        with pytest.raises(ValueError, match="`logits`"):
            target = random_target(case, device)
            build(case)(random_logits(case, device), target, **extra(case, target))


# --------------------------------------------------------------------------- registry


@loss_names
def test_create_loss_returns_registered_class(name: str) -> None:
    created = create_loss(name, **REQUIRED_ARGUMENTS.get(name, {}))
    assert type(created) is loss_class(name) and isinstance(created, Loss)
    assert name in seglosses.list_losses(name)


def test_unknown_loss_name_suggests_closest() -> None:
    with pytest.raises(ValueError, match=r"`name`.*'dice'"):
        create_loss("dicee")
