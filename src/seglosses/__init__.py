"""seglosses: validated, fast segmentation losses, the Top-k / Bottom-all-but-sigma envelope and
metrics for medical image segmentation in PyTorch."""

from seglosses import blocks, boundary, compound, distance, envelope, inverseform, metrics, pixel, region
from seglosses._checks import set_value_checks, value_checks
from seglosses.base import Loss, reduce_images
from seglosses.boundary import *  # noqa: F403
from seglosses.compound import *  # noqa: F403
from seglosses.envelope import *  # noqa: F403
from seglosses.inverseform import *  # noqa: F403
from seglosses.pixel import *  # noqa: F403
from seglosses.region import *  # noqa: F403
from seglosses.registry import create_loss, list_losses, loss_class, register_loss
from seglosses.supervision import DeepSupervision, deep_supervision_weights, downsample_target
from seglosses.targets import prepare

__version__ = "0.1.0"

__all__ = [
    "DeepSupervision",
    "Loss",
    "blocks",
    "distance",
    "create_loss",
    "deep_supervision_weights",
    "downsample_target",
    "list_losses",
    "loss_class",
    "metrics",
    "prepare",
    "reduce_images",
    "register_loss",
    "set_value_checks",
    "value_checks",
    *boundary.__all__,
    *compound.__all__,
    *envelope.__all__,
    *inverseform.__all__,
    *pixel.__all__,
    *region.__all__,
]
