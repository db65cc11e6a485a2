r"""InverseForm (Borse et al.): a frozen network measures how far the predicted boundary is from the
target boundary as an affine transformation; the loss is that transformation's distance from identity.

The published inverse-transformation network (``distance_measures_regressor.pth``) cannot be
downloaded here, so this module ships its own, trained on synthetic boundary transformations by
:mod:`seglosses.inverseform_training` (1600 steps of 64 pairs, 6.5 minutes on one CPU core; the
checkpoint, ``weights/inverse_transform_net.pt``, and its training record with held-out errors,
``weights/inverse_transform_net.json``, are package data). On held-out pairs it recovers shifts of up
to 5 pixels per axis with a median error of 0.44 pixel, rotations of up to 20 degrees within 1.4 degrees and
scalings within 0.013 (:func:`training_record`). Differences from the paper, on purpose:

- **Tiles of 32 x 32 at native resolution** (the paper resizes to 672 x 1344 and cuts 224 x 224 tiles):
  small enough to train on a CPU; the boundary maps are zero-padded to whole tiles instead of resized.
- **A small convolutional network** (four convolutions with group norm on the two tiles and their
  blurred copies, moments of the features over the tile, two linear layers; 78k parameters, 0.3 MB)
  instead of the paper's 2 x 224 x 224 -> 1000 -> 32 -> 4 perceptron.
- **It regresses the logarithm of the affine transformation** (the 2 x 3 top of
  :math:`\log\Theta` for the homogeneous :math:`\Theta`) and is antisymmetric by construction,
  :math:`f(a, b) = g(a, b) - g(b, a)`: swapping the tiles inverts the transformation, which negates
  its logarithm exactly, and identical tiles give exactly zero. So a perfect prediction has loss 0.
- **Boundaries from the segmentation**: the predicted boundary is a soft map of the probabilities, the
  target boundary the same map of the one-hot target (:func:`soft_boundary`), per class, instead of a
  separate boundary head; that keeps the loss drop-in for (B, C, H, W) logits. (The reference applies
  ``log_softmax`` to its one-channel boundary head before the network, which makes its input
  identically zero; we do not copy that.)

Known limit: training pairs share one edge softness, so a boundary that is right but weaker (a
prediction of 0.7 instead of 1 along it) reads partly as a scaling (about 0.18 on synthetic tiles).
The term therefore also pushes toward confident boundaries; the cross-entropy term does the same.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglosses._checks import check_number, check_type, fail
from seglosses.base import Loss, reduce_images
from seglosses.blocks import class_average_weights
from seglosses.pixel import cross_entropy
from seglosses.registry import register_loss
from seglosses.targets import check_logits, prepare

__all__ = [
    "InverseFormLoss",
    "InverseTransformNet",
    "inverse_transform_net",
    "inverseform_distance",
    "inverseform_loss",
]

TILE_SIZE = 32
CHECKPOINT = Path(__file__).with_name("weights") / "inverse_transform_net.pt"
TRAINING_RECORD = CHECKPOINT.with_suffix(".json")


class InverseTransformNet(nn.Module):
    r"""Regress the affine transformation between two boundary tiles, as its logarithm.

    For tiles ``a`` and ``b = a`` warped by :math:`\Theta` (``b(x) = a(\Theta x)`` in the normalised
    coordinates of ``torch.nn.functional.affine_grid`` with ``align_corners=False``), it predicts the six
    entries of the top two rows of :math:`\log\Theta` (row-major: a11, a12, tx, a21, a22, ty); zero means
    identity. Antisymmetric: ``net(a, b) == -net(b, a)``, and ``net(a, a) == 0`` exactly.

    Args:
        tile_size: side of the square tiles (the shipped checkpoint is trained at 32).

    Example:
        >>> net = InverseTransformNet()
        >>> tile = torch.rand(3, 1, 32, 32)
        >>> net(tile, tile).abs().max().item(), tuple(net(tile, tile.flip(-1)).shape)
        (0.0, (3, 6))
    """

    def __init__(self, tile_size: int = TILE_SIZE) -> None:
        super().__init__()
        check_type("tile_size", tile_size, int)
        if tile_size < 8 or tile_size % 4:
            fail("tile_size", "a multiple of 4, at least 8", tile_size)
        self.tile_size = tile_size
        self.features = nn.Sequential(
            nn.Conv2d(4, 32, 3, stride=2, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 32, 3, padding=2, dilation=2), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.GroupNorm(8, 48), nn.SiLU(),
            nn.Conv2d(48, 64, 3, padding=2, dilation=2), nn.GroupNorm(8, 64), nn.SiLU(),
        )
        self.head = nn.Sequential(nn.Linear(3 * 64, 128), nn.SiLU(), nn.Linear(128, 6))
        # The head sees moments of the features (their mean, and their means weighted by x and by y):
        # an affine motion is linear in the coordinates, so these are the statistics it needs.
        side = tile_size // 4
        axis = (torch.arange(side, dtype=torch.float32) * 2 + 1) / side - 1
        self.register_buffer("coordinates", torch.stack(torch.meshgrid(axis, axis, indexing="xy")), persistent=False)
        # Blurred copies widen thin boundaries so that shifts of a few pixels still overlap.
        offsets = torch.arange(-4, 5, dtype=torch.float32)
        kernel = torch.exp(-(offsets**2) / (2 * 1.5**2))
        self.register_buffer("blur_kernel", kernel / kernel.sum(), persistent=False)

    def _blur(self, tiles: Tensor) -> Tensor:
        kernel = self.blur_kernel.to(tiles.dtype)
        tiles = F.conv2d(tiles, kernel.view(1, 1, 1, -1), padding=(0, 4))
        return F.conv2d(tiles, kernel.view(1, 1, -1, 1), padding=(4, 0))

    def one_way(self, a: Tensor, b: Tensor) -> Tensor:
        """g(a, b): the network before antisymmetrisation, (N, 6)."""
        features = self.features(torch.cat([a, b, 4.0 * self._blur(a), 4.0 * self._blur(b)], dim=1))
        x, y = self.coordinates.to(features.dtype)
        moments = torch.cat([features.mean(dim=(2, 3)), (features * x).mean(dim=(2, 3)),
                             (features * y).mean(dim=(2, 3))], dim=1)
        return self.head(moments)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Log-affine parameters (N, 6) taking tile ``a`` to tile ``b``; both (N, 1, T, T)."""
        for name, tile in (("a", a), ("b", b)):
            if tile.ndim != 4 or tile.shape[1:] != (1, self.tile_size, self.tile_size):
                fail(name, f"tiles of shape (N, 1, {self.tile_size}, {self.tile_size})", f"shape {tuple(tile.shape)}")
        if a.shape != b.shape:
            fail("b", f"of the shape of `a` {tuple(a.shape)}", f"shape {tuple(b.shape)}")
        both = self.one_way(torch.cat([a, b]), torch.cat([b, a]))
        forward, backward = both.chunk(2)
        return forward - backward


def affine_from_log(log_parameters: Tensor) -> Tensor:
    """The (N, 2, 3) affine matrices (``affine_grid``'s theta) of (N, 6) log-affine parameters.

    Example:
        >>> affine_from_log(torch.zeros(1, 6))
        tensor([[[1., 0., 0.],
                 [0., 1., 0.]]])
    """
    generator = torch.zeros(log_parameters.shape[0], 3, 3, dtype=log_parameters.dtype, device=log_parameters.device)
    generator[:, :2] = log_parameters.view(-1, 2, 3)
    return torch.linalg.matrix_exp(generator)[:, :2]


@functools.lru_cache(maxsize=8)
def _checkpoint_state() -> dict[str, Tensor]:
    if not CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"The InverseForm network checkpoint is missing at {CHECKPOINT}; it ships with the package "
            "(retrain it with `python -m seglosses.inverseform_training`)."
        )
    return torch.load(CHECKPOINT, map_location="cpu", weights_only=True)


# One frozen copy per (device, dtype), filled on first use; a plain dict, so that torch.compile looks it up
# instead of tracing the loading.
_NETWORKS: dict[tuple[torch.device, torch.dtype], InverseTransformNet] = {}


def inverse_transform_net(device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> InverseTransformNet:
    """The shipped network, frozen (no gradient, eval mode), on ``device`` in ``dtype``; one copy per pair.

    Loaded with ``torch.load(weights_only=True)`` (a state dict of tensors, nothing executed). The loss
    compiles as one graph (``torch.compile(..., fullgraph=True)``) once the copy for its device and dtype
    exists: call it once eagerly, or this function, before compiling.

    Example:
        >>> net = inverse_transform_net()
        >>> net.training, any(p.requires_grad for p in net.parameters())
        (False, False)
    """
    key = (torch.device(device), dtype)
    net = _NETWORKS.get(key)
    if net is None:
        net = InverseTransformNet()
        net.load_state_dict(_checkpoint_state())
        net.requires_grad_(False)
        net = _NETWORKS.setdefault(key, net.eval().to(device=key[0], dtype=dtype))
    return net


def training_record() -> dict:
    """What the shipped checkpoint was trained with and how well it recovers held-out transformations."""
    return json.loads(TRAINING_RECORD.read_text())


def soft_boundary(probs: Tensor, valid: Tensor | None = None) -> Tensor:
    r"""A soft boundary map of (B, C, H, W) probabilities: four times their variance over each 3 x 3
    neighbourhood, in [0, 1].

    A one-hot map gives 8/9 beside a straight border (on both sides) and 0 inside regions; the map is smooth
    in ``probs``. Only counted pixels enter a neighbourhood (the image border and ignored pixels do not
    make boundaries), and ignored pixels get 0.

    Args:
        probs: (B, C, H, W) values in [0, 1].
        valid: (B, H, W) mask of counted pixels (1) or None.

    Returns:
        (B, C, H, W).

    Example:
        >>> right_half = torch.zeros(1, 1, 4, 6)
        >>> right_half[..., 3:] = 1.0
        >>> soft_boundary(right_half)[0, 0, 0]  # 8/9 on both sides of the border, also on the image's edge rows
        tensor([0.0000, 0.0000, 0.8889, 0.8889, 0.0000, 0.0000])
    """
    weight = torch.ones_like(probs[:, :1]) if valid is None else valid.unsqueeze(1).to(probs.dtype)
    count = F.avg_pool2d(weight, 3, stride=1, padding=1)
    mean = F.avg_pool2d(probs * weight, 3, stride=1, padding=1) / count.clamp_min(1e-12)
    mean_square = F.avg_pool2d(probs * probs * weight, 3, stride=1, padding=1) / count.clamp_min(1e-12)
    return 4.0 * (mean_square - mean * mean).clamp_min(0.0) * weight


# --------------------------------------------------------------------------- the loss


def _check_downsample(downsample: int) -> int:
    check_type("downsample", downsample, int)
    if downsample < 1:
        fail("downsample", "a positive int", downsample)
    return downsample


def _tiles(maps: Tensor, tile_size: int) -> Tensor:
    """(B, K, H, W) maps zero-padded to whole tiles -> (B * K * tiles, 1, T, T), image-major."""
    batch, channels, height, width = maps.shape
    rows, columns = -(-height // tile_size), -(-width // tile_size)
    maps = F.pad(maps, (0, columns * tile_size - width, 0, rows * tile_size - height))
    tiles = maps.reshape(batch, channels, rows, tile_size, columns, tile_size).permute(0, 1, 2, 4, 3, 5)
    return tiles.reshape(-1, 1, tile_size, tile_size)


def _pooled(maps: Tensor, valid: Tensor | None, factor: int) -> tuple[Tensor, Tensor | None]:
    """(B, K, H, W) maps averaged over the counted pixels of each ``factor`` x ``factor`` cell (the last cells
    may be partial), and the fraction of each cell that is counted ((B, H', W'); None when nothing is ignored)."""
    if factor == 1:
        return maps, valid
    if valid is None:
        return F.avg_pool2d(maps, factor, ceil_mode=True), None
    weight = valid.unsqueeze(1).to(maps.dtype)
    counted = F.avg_pool2d(weight, factor, ceil_mode=True)
    pooled = F.avg_pool2d(maps * weight, factor, ceil_mode=True) / counted.clamp_min(1e-12)
    return pooled, counted[:, 0]


def inverseform_distance(logits: Tensor, target: Tensor, *, include_background: bool = False,
                         class_weights: Sequence[float] | Tensor | None = None, mode: str | None = None,
                         ignore_index: int | None = None, downsample: int = 1) -> Tensor:
    r"""The InverseForm term per image, (B,): the mean over tiles of :math:`\lVert f(\hat b, b)\rVert_2`,
    averaged over the scored classes; see :func:`inverseform_loss`.

    Example:
        >>> labels = torch.zeros(1, 12, 12, dtype=torch.long)
        >>> labels[0, 3:9, 3:9] = 1
        >>> perfect = 20.0 * torch.stack([labels == 0, labels == 1], dim=1).float()
        >>> shifted = perfect.roll(2, dims=-1)
        >>> distances = inverseform_distance(torch.cat([perfect, shifted]), torch.cat([labels, labels]))
        >>> bool(distances[0] < 1e-6 < 0.05 < distances[1])
        True
    """
    logits = check_logits(logits)
    if logits.ndim != 4:
        fail("logits", "of shape (B, C, H, W): InverseForm is 2D only", f"shape {tuple(logits.shape)}")
    prepared = prepare(logits, target, mode=mode, ignore_index=ignore_index)
    check_type("include_background", include_background, bool)
    downsample = _check_downsample(downsample)
    scores_background = include_background or prepared.mode != "multiclass"
    weights = class_average_weights(prepared, scores_background, class_weights)
    # Channels chosen from the options alone (no look at the weights' values: no host sync, one graph).
    first = 0 if scores_background else 1
    with torch.autocast(prepared.logits.device.type, enabled=False):  # the frozen network runs in float32/64
        probs, valid = _pooled(prepared.probs()[:, first:], prepared.valid, downsample)
        dense, _ = _pooled(prepared.target[:, first:], prepared.valid, downsample)
        predicted, truth = soft_boundary(probs, valid), soft_boundary(dense, valid)
        net = inverse_transform_net(prepared.logits.device, prepared.logits.dtype)
        parameters = net(_tiles(predicted, net.tile_size), _tiles(truth, net.tile_size))
    per_class = torch.linalg.vector_norm(parameters, dim=1).view(*predicted.shape[:2], -1).mean(dim=2)
    return (per_class * weights[first:]).sum(dim=1)


def inverseform_loss(
    logits: Tensor,
    target: Tensor,
    *,
    lambda_ce: float = 1.0,
    lambda_inverseform: float = 0.3,
    include_background: bool = False,
    class_weights: Sequence[float] | Tensor | None = None,
    mode: str | None = None,
    ignore_index: int | None = None,
    downsample: int = 1,
    reduction: str = "mean",
) -> Tensor:
    r"""InverseForm loss: cross-entropy plus the distance from identity of the affine transformation that a
    frozen network finds between the predicted and the target boundaries.

    .. math::
        L_i = \lambda_{CE}\,\mathrm{CE}_i + \lambda_{IF}\,\frac{1}{|C'|}\sum_{c\in C'}\frac{1}{|T|}\sum_{t\in T}
              \big\lVert f(\hat b_{c,t}, b_{c,t}) \big\rVert_2 ,

    :math:`\hat b_c` = :func:`soft_boundary` of the probabilities of class :math:`c`, :math:`b_c` the same map
    of its one-hot target, both cut into 32 x 32 tiles :math:`t` (zero-padded at the bottom and right),
    :math:`f` the frozen :class:`InverseTransformNet` (:func:`inverse_transform_net`), whose six outputs
    are the logarithm of the affine transformation (zero for identity). :math:`C'` are the foreground
    classes (every channel in the sigmoid modes). A perfect prediction has identical boundary maps, so
    :math:`f = 0` exactly: the term's minimum is 0. Tiles without a boundary in either map give 0 (they
    count in the mean, as in the reference). A class absent from the target but predicted gives tiles
    with a predicted boundary and an empty target boundary, which the network never saw in training;
    its value there means little: the cross-entropy term carries that error.

    Defaults follow the paper's total (SPEC D.19), :math:`1\cdot CE + 0.3\,L_{IF}`, without the two terms
    that need a separate boundary head (0.3 BCE on the boundary head's output, 0.1 edge-attention CE):
    compose them yourself if your network has one. ``lambda_ce=0, lambda_inverseform=1`` gives the
    InverseForm term alone (:func:`inverseform_distance`). 2D only: 3D logits raise a ``ValueError``.

    Reference: Borse et al., "InverseForm: A Loss Function for Structured Boundary-Aware Segmentation",
    CVPR 2021. The network is ours (see the module docstring): trained on synthetic boundary
    transformations, not the published checkpoint.

    Args:
        logits: (B, C, H, W) scores (softmax in multiclass mode, sigmoid otherwise).
        target: labels (B, H, W) / (B, 1, H, W) or a dense (B, C, H, W) target.
        lambda_ce: weight of the (class-weighted) cross-entropy (>= 0).
        lambda_inverseform: weight of the InverseForm term (>= 0).
        include_background: score channel 0's boundary too in multiclass mode (default False: the
            background's boundary is the union of the others').
        class_weights: (C,) weights of the cross-entropy and of the class average of the InverseForm term.
        mode, ignore_index, reduction: as in :func:`~seglosses.pixel.cross_entropy`; ignored pixels carry
            no boundary.
        downsample: average the probabilities and the target over ``downsample`` x ``downsample`` cells
            (over their counted pixels) before the boundary maps, as the paper resizes before tiling: the
            term costs about 1 / downsample^2 as much, and each tile covers a larger area (default 1).

    Returns:
        A scalar, or (B,) for ``reduction="none"``.

    Example:
        >>> labels = torch.zeros(2, 12, 12, dtype=torch.long)
        >>> labels[:, 3:9, 3:9] = 1
        >>> perfect = 20.0 * torch.stack([labels == 0, labels == 1], dim=1).float()
        >>> losses = inverseform_loss(perfect, labels, lambda_ce=0.0, lambda_inverseform=1.0, reduction="none")
        >>> bool(losses.abs().max() < 1e-6)
        True
    """
    lambda_ce = check_number("lambda_ce", lambda_ce, low=0.0)
    lambda_inverseform = check_number("lambda_inverseform", lambda_inverseform, low=0.0)
    distance = inverseform_distance(logits, target, include_background=include_background,
                                    class_weights=class_weights, mode=mode, ignore_index=ignore_index,
                                    downsample=downsample)
    per_image = lambda_inverseform * distance
    if lambda_ce > 0:
        per_image = per_image + lambda_ce * cross_entropy(logits, target, mode=mode, class_weights=class_weights,
                                                          ignore_index=ignore_index, reduction="none")
    return reduce_images(per_image, reduction)


@register_loss("inverseform")
class InverseFormLoss(Loss):
    """Module form of :func:`inverseform_loss`; the frozen network is shared, not a submodule (the
    module stores configuration only, so its ``state_dict`` and ``parameters`` stay empty).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> logits, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> torch.allclose(InverseFormLoss()(logits, labels), inverseform_loss(logits, labels))
        True
    """

    spatial_dims = (2,)
    function = staticmethod(inverseform_loss)

    def __init__(
        self,
        *,
        lambda_ce: float = 1.0,
        lambda_inverseform: float = 0.3,
        include_background: bool = False,
        class_weights: Sequence[float] | Tensor | None = None,
        mode: str | None = None,
        ignore_index: int | None = None,
        downsample: int = 1,
        reduction: str = "mean",
    ) -> None:
        check_number("lambda_ce", lambda_ce, low=0.0)
        check_number("lambda_inverseform", lambda_inverseform, low=0.0)
        _check_downsample(downsample)
        super().__init__(reduction, lambda_ce=lambda_ce, lambda_inverseform=lambda_inverseform,
                         include_background=include_background, class_weights=class_weights, mode=mode,
                         ignore_index=ignore_index, downsample=downsample)
