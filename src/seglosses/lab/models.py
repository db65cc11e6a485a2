"""MONAI networks by name and options, 2D or 3D, with optional deep supervision.

The runner writes no model zoo of its own: :func:`build_model` looks a name up in
:data:`NETWORKS`, fills in the sizes that come from the data (``spatial_dims``, ``in_channels``,
``out_channels``) and passes every other option to the MONAI constructor unchanged, over a small
set of defaults per network (chosen to train in minutes on a 256x256 2D dataset).

Deep supervision (``deep_supervision=True``) makes the model return, in training mode, a list of
full-resolution logits, main head first: MONAI's ``DynUNet`` has it built in (``deep_supr_num``
extra heads); for ``BasicUNet`` two 1x1-convolution heads read the decoder features at 1/2 and
1/4 resolution through forward hooks and are upsampled bilinearly. In evaluation mode every model
returns the main head's logits alone. Other networks refuse deep supervision with a clear error.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from seglosses._checks import check_type, fail

__all__ = ["DEEP_SUPERVISION_NETWORKS", "NETWORKS", "ModelConfig", "build_model", "check_model_name",
           "deep_supervision_weights"]


@dataclass
class ModelConfig:
    """Which MONAI network, and its constructor options (sizes from the data are filled in).

    Example:
        >>> ModelConfig(name="unet", options={"channels": [8, 16, 32], "strides": [2, 2]}).name
        'unet'
    """

    name: str = "basic_unet"
    options: dict[str, Any] = field(default_factory=dict)


def _networks() -> dict[str, tuple[type, dict[str, Any]]]:
    from monai.networks import nets  # the lab extra; imported on use so that `seglosses.lab` imports fast

    return {
        "basic_unet": (nets.BasicUNet, {"features": (32, 32, 64, 128, 256, 32)}),
        "unet": (nets.UNet, {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}),
        "attention_unet": (nets.AttentionUnet, {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2)}),
        "segresnet": (nets.SegResNet, {"init_filters": 16}),
        "swin_unetr": (nets.SwinUNETR, {"feature_size": 24}),
        "dynunet": (nets.DynUNet, {"kernel_size": (3, 3, 3, 3, 3), "strides": (1, 2, 2, 2, 2),
                                   "upsample_kernel_size": (2, 2, 2, 2), "filters": (32, 64, 128, 256, 320)}),
    }


NETWORKS: tuple[str, ...] = ("basic_unet", "unet", "attention_unet", "segresnet", "swin_unetr", "dynunet")
"""The network names :func:`build_model` knows (MONAI's BasicUNet, UNet, AttentionUnet, SegResNet,
SwinUNETR and DynUNet)."""

DEEP_SUPERVISION_NETWORKS: tuple[str, ...] = ("basic_unet", "dynunet")
"""The networks with deep supervision heads."""


def check_model_name(name: Any, key: str = "name") -> None:
    """``ValueError`` unless ``name`` is one of :data:`NETWORKS` (the closest names suggested)."""
    check_type(key, name, str)
    if name not in NETWORKS:
        close = difflib.get_close_matches(name, NETWORKS, n=2, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Expected `{key}` to be one of {list(NETWORKS)}, but got {name!r}.{hint}")


class BasicUNetWithHeads(nn.Module):
    """MONAI's BasicUNet plus deep supervision heads on its decoder at 1/2 and 1/4 resolution.

    The heads are 1x1 convolutions on the outputs of ``upcat_2`` and ``upcat_3`` (captured with
    forward hooks, so the MONAI network is used unchanged); their logits are upsampled
    (bilinear or trilinear) to the input size. Training mode returns ``[main, half, quarter]``,
    evaluation mode the main logits alone.
    """

    def __init__(self, network: nn.Module, spatial_dims: int, out_channels: int) -> None:
        super().__init__()
        self.network = network
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.heads = nn.ModuleList()
        self._features: list[Tensor | None] = [None, None]
        for position, block in enumerate((network.upcat_2, network.upcat_3)):
            channels = block.convs.conv_1.conv.out_channels
            self.heads.append(conv(channels, out_channels, kernel_size=1))
            block.register_forward_hook(self._capture(position))
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def _capture(self, position: int):
        def hook(module, inputs, output):
            self._features[position] = output

        return hook

    def forward(self, images: Tensor) -> Tensor | list[Tensor]:
        logits = self.network(images)
        if not self.training:
            return logits
        size = logits.shape[2:]
        extra = [F.interpolate(head(features), size=size, mode=self.mode, align_corners=False)
                 for head, features in zip(self.heads, self._features, strict=True)]
        self._features = [None, None]
        return [logits, *extra]


class DynUNetHeads(nn.Module):
    """MONAI's DynUNet with ``deep_supervision=True``, returning a list of heads instead of its
    stacked (B, H, C, *S) tensor in training mode, like :class:`BasicUNetWithHeads`."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: Tensor) -> Tensor | list[Tensor]:
        out = self.network(images)
        if not self.training:
            return out
        return list(out.unbind(dim=1))


def deep_supervision_weights(num_heads: int) -> list[float]:
    """Weights of the heads, main first: halving per head, normalised to sum 1 (nnU-Net's scheme).

    Example:
        >>> deep_supervision_weights(3)
        [0.5714285714285714, 0.2857142857142857, 0.14285714285714285]
    """
    raw = [0.5**position for position in range(num_heads)]
    return [weight / sum(raw) for weight in raw]


def build_model(
    config: ModelConfig,
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    deep_supervision: bool = False,
    image_size: Sequence[int] | None = None,
) -> nn.Module:
    """Instantiate the MONAI network ``config.name`` with ``config.options`` over its defaults.

    Args:
        config: the network name (one of :data:`NETWORKS`) and constructor options.
        spatial_dims: 2 or 3 (from the data).
        in_channels: image channels (from the data).
        out_channels: logit channels (classes; 1 for a sigmoid binary loss).
        deep_supervision: return a list of head logits in training mode (BasicUNet, DynUNet).
        image_size: the training image size, checked against the network's downsampling where
            it matters (SwinUNETR needs multiples of 32).

    Returns:
        The model: input (B, in_channels, *S), output (B, out_channels, *S) logits (a list of
        such tensors in training mode with deep supervision).

    Example:
        >>> import torch
        >>> model = build_model(ModelConfig("basic_unet", {"features": [4, 4, 8, 8, 16, 4]}),
        ...                     spatial_dims=2, in_channels=1, out_channels=3)
        >>> tuple(model(torch.zeros(1, 1, 32, 32)).shape)
        (1, 3, 32, 32)
    """
    check_type("model", config, ModelConfig)
    check_model_name(config.name, "model.name")
    check_type("model.options", config.options, dict)
    if spatial_dims not in (2, 3):
        fail("spatial_dims", "2 or 3", spatial_dims)
    if deep_supervision and config.name not in DEEP_SUPERVISION_NETWORKS:
        fail("train.deep_supervision", f"False for model {config.name!r} (deep supervision heads exist for "
             f"{list(DEEP_SUPERVISION_NETWORKS)})", True)
    network_class, defaults = _networks()[config.name]
    sizes = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels}
    fixed = [name for name in sizes if name in config.options]
    if fixed:
        fail("model.options", "free of spatial_dims, in_channels and out_channels (they come from the data)",
             f"{fixed}")
    options = {**defaults, **config.options, **sizes}
    if config.name == "swin_unetr" and image_size is not None and any(size % 32 for size in image_size):
        fail("data.image_size", "multiples of 32 for swin_unetr (five downsamplings by 2)", tuple(image_size))
    if config.name == "swin_unetr" and importlib.util.find_spec("einops") is None:
        fail("model.name", "a network whose dependencies are installed (MONAI's SwinUNETR needs the einops "
             "package: pip install einops)", "'swin_unetr'", ImportError)
    if config.name == "dynunet" and deep_supervision:
        upsamplings = len(options["strides"]) - 1
        heads = options.get("deep_supr_num", min(2, upsamplings - 1))
        if not 1 <= heads < upsamplings:
            fail("model.options.deep_supr_num", f"in [1, {upsamplings - 1}] (fewer than the {upsamplings} "
                 "upsamplings of this DynUNet)", heads)
        options = {**options, "deep_supervision": True, "deep_supr_num": heads}
    try:
        network = network_class(**options)
    except TypeError as error:  # an unknown or missing constructor option: name the network and the key
        raise TypeError(f"Expected `model.options` to be options of MONAI {network_class.__name__}, but got "
                        f"{sorted(config.options)}: {error}") from error
    if not deep_supervision:
        return network
    if config.name == "dynunet":
        return DynUNetHeads(network)
    return BasicUNetWithHeads(network, spatial_dims, out_channels)
