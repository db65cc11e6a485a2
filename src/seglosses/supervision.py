"""Deep supervision: one loss over the outputs of a network at several resolutions.

A deeply supervised network (nnU-Net, MONAI's DynUNet with ``deep_supervision=True``) returns a
list of logits, the full resolution first and then coarser ones. :class:`DeepSupervision` wraps
any loss and sums its value at every resolution with weights that halve per level (nnU-Net's
rule); the target is downsampled to each output's size by nearest neighbour, or given as a list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from seglosses._checks import check_type, fail
from seglosses.base import Loss
from seglosses.targets import check_logits

__all__ = ["DeepSupervision", "deep_supervision_weights", "downsample_target"]

WEIGHT_RULES: tuple[str, ...] = ("nnunet", "halving")


def deep_supervision_weights(num_outputs: int, rule: str = "nnunet") -> list[float]:
    r"""Weights of ``num_outputs`` resolutions (full resolution first), normalised to sum to one.

    .. math::
        w_i \propto 2^{-i}\ (\text{"halving"}),\qquad
        w_i \propto 2^{-i},\ w_{n-1} = 0 \text{ when } n > 1\ (\text{"nnunet"})

    "nnunet" is nnU-Net's rule (v1 ``MultipleOutputLoss2``, v2 ``nnUNetTrainer._build_loss``):
    halving weights whose coarsest output gets no weight. MONAI's ``DeepSupervisionLoss`` uses
    unnormalised halving weights with a floor of 1/16: pass them to :class:`DeepSupervision`
    with ``normalize=False``.

    Example:
        >>> deep_supervision_weights(4)
        [0.5714285714285714, 0.2857142857142857, 0.14285714285714285, 0.0]
        >>> deep_supervision_weights(3, "halving")
        [0.5714285714285714, 0.2857142857142857, 0.14285714285714285]
    """
    check_type("num_outputs", num_outputs, int)
    if num_outputs < 1:
        fail("num_outputs", "at least 1", num_outputs)
    if rule not in WEIGHT_RULES:
        fail("weights", f"one of {list(WEIGHT_RULES)} or a sequence of numbers", repr(rule))
    weights = [0.5**level for level in range(num_outputs)]
    if rule == "nnunet" and num_outputs > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(target: Tensor, size: Sequence[int], num_channels: int) -> Tensor:
    """``target`` brought to the spatial ``size`` by nearest neighbour ("nearest-exact", as MONAI and nnU-Net v2).

    Labels (B, *S) and (B, 1, *S) keep their dtype (and any ignore label); dense (B, C, *S)
    targets stay dense. ``num_channels`` is C of the logits, which tells (B, 1, *S) labels from a
    binary dense target.

    Example:
        >>> import torch
        >>> labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]])
        >>> downsample_target(labels, (2, 2), num_channels=4)
        tensor([[[0, 1],
                 [2, 3]]])
    """
    size = tuple(int(s) for s in size)
    spatial = len(size)
    if tuple(target.shape[-spatial:]) == size:
        return target
    has_channels = target.ndim == spatial + 2
    values = target if has_channels else target.unsqueeze(1)
    resized = F.interpolate(values.double(), size=size, mode="nearest-exact").to(target.dtype)
    return resized if has_channels else resized[:, 0]


class DeepSupervision(Loss):
    r"""A loss summed over the outputs of a deeply supervised network, coarser outputs weighing less.

    .. math::
        L = \sum_{i=0}^{n-1} w_i\, L(z^{(i)}, y^{(i)})

    with :math:`z^{(0)}` the full-resolution logits, :math:`y^{(i)}` the target at the resolution
    of :math:`z^{(i)}` (nearest-neighbour downsampling of one target, or the i-th of a list) and
    :math:`w` from ``weights``. Reference: C.-Y. Lee et al., "Deeply-supervised nets", AISTATS
    2015; the weights of nnU-Net (F. Isensee et al., Nature Methods 18, 2021).

    Args:
        loss: any seglosses loss (a module, a weighted sum, a ``create_loss`` product); its
            ``reduction`` is used.
        weights: "nnunet" (default: 1, 1/2, 1/4, ... with the coarsest output at 0, normalised),
            "halving" (1, 1/2, 1/4, ..., normalised), or one non-negative number per output.
        normalize: divide explicit weights by their sum (the named rules are always normalised).

    Example:
        >>> import torch
        >>> from seglosses import DiceLoss
        >>> _ = torch.manual_seed(0)
        >>> outputs = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
        >>> labels = torch.randint(0, 3, (2, 16, 16))
        >>> loss = DeepSupervision(DiceLoss())
        >>> loss.level_weights(3)
        [0.6666666666666666, 0.3333333333333333, 0.0]
        >>> value = loss(outputs, labels)
        >>> torch.allclose(value, 2 / 3 * DiceLoss()(outputs[0], labels) + 1 / 3 * DiceLoss()(
        ...     outputs[1], downsample_target(labels, (8, 8), 3)))
        True
    """

    def __init__(self, loss: Loss, weights: str | Sequence[float] = "nnunet", normalize: bool = True) -> None:
        """Wrap ``loss``; see the class docstring for ``weights`` and ``normalize``."""
        check_type("loss", loss, Loss)
        check_type("normalize", normalize, bool)
        if isinstance(weights, str):
            deep_supervision_weights(1, weights)  # validates the rule's name
        else:
            check_type("weights", weights, (list, tuple))
            if len(weights) == 0:
                fail("weights", "a non-empty sequence of non-negative numbers", "an empty sequence")
            for position, weight in enumerate(weights):
                check_type(f"weights[{position}]", weight, (int, float))
                if not (math.isfinite(weight) and weight >= 0):
                    fail(f"weights[{position}]", "finite and non-negative", weight)
            if normalize and sum(weights) == 0:
                fail("weights", "a sequence with a positive sum (they are normalised)", list(weights))
            weights = [float(w) for w in weights]
        super().__init__(loss.reduction)
        self.loss = loss
        self.weights = weights
        self.normalize = normalize

    @property
    def ignore_index(self) -> int | None:
        return self.loss.ignore_index

    @property
    def mode(self) -> str | None:
        return self.loss.mode

    def level_weights(self, num_outputs: int) -> list[float]:
        """The weight of each of ``num_outputs`` outputs, full resolution first."""
        if isinstance(self.weights, str):
            return deep_supervision_weights(num_outputs, self.weights)
        if len(self.weights) != num_outputs:
            fail("logits", f"a list of {len(self.weights)} outputs (one per weight)", f"{num_outputs} outputs")
        if not self.normalize:
            return list(self.weights)
        total = sum(self.weights)
        return [w / total for w in self.weights]

    def _levels(self, logits: Sequence[Tensor] | Tensor, target: Sequence[Tensor] | Tensor):
        outputs = [logits] if isinstance(logits, Tensor) else logits
        if not isinstance(outputs, (list, tuple)) or len(outputs) == 0:
            fail("logits", "a non-empty list of (B, C, *S) tensors, the full resolution first", repr(type(logits)),
                 TypeError)
        for position, output in enumerate(outputs):
            check_logits(output)
            if output.shape[:2] != outputs[0].shape[:2] or output.ndim != outputs[0].ndim:
                fail(f"logits[{position}]", f"of shape {tuple(outputs[0].shape[:2])} + a spatial size",
                     f"shape {tuple(output.shape)}")
        if isinstance(target, (list, tuple)):
            if len(target) != len(outputs):
                fail("target", f"one tensor per output ({len(outputs)})", f"a list of {len(target)}")
            targets = list(target)
        else:
            check_type("target", target, Tensor)
            channels = outputs[0].shape[1]
            targets = [downsample_target(target, output.shape[2:], channels) for output in outputs]
        weights = self.level_weights(len(outputs))
        return [(w, output, t) for w, output, t in zip(weights, outputs, targets, strict=True) if w != 0]

    def per_image(self, logits: Sequence[Tensor] | Tensor, target: Sequence[Tensor] | Tensor) -> Tensor:
        """Weighted sum of the wrapped loss's per-image values over the outputs, (B,)."""
        return sum(w * self.loss.per_image(output, t) for w, output, t in self._levels(logits, target))

    def per_pixel(self, logits, target) -> Tensor:
        """Not available: the outputs have different resolutions."""
        raise TypeError("`DeepSupervision` has no per-pixel form: its outputs have different resolutions.")

    def forward(self, logits: Sequence[Tensor] | Tensor, target: Sequence[Tensor] | Tensor) -> Tensor:
        """The loss over every output (a list, full resolution first; a single tensor is the plain loss).

        Args:
            logits: a list of (B, C, *S_i) logits, the full resolution first, or one tensor.
            target: one target at full resolution (labels (B, *S), (B, 1, *S) or dense (B, C, *S)),
                downsampled to each output by nearest neighbour; or a list with one target per output.

        Returns:
            The weighted sum of the wrapped loss's values (reduced over images by its ``reduction``).
        """
        return sum(w * self.loss(output, t) for w, output, t in self._levels(logits, target))

    def extra_repr(self) -> str:
        return f"weights={self.weights!r}, normalize={self.normalize}"
