"""MONAI networks by name: 2D and 3D shapes, deep supervision heads, and clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from seglosses.lab.models import NETWORKS, ModelConfig, build_model, deep_supervision_weights

TINY = {
    "basic_unet": {"features": [4, 4, 8, 8, 16, 4]},
    "unet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "attention_unet": {"channels": [4, 8, 16], "strides": [2, 2]},
    "segresnet": {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
    "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
    "dynunet": {"kernel_size": [3, 3, 3, 3], "strides": [1, 2, 2, 2], "upsample_kernel_size": [2, 2, 2],
                "filters": [4, 8, 16, 16]},
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", NETWORKS)
def test_every_network_maps_images_to_logits_in_2d(name):
    torch.manual_seed(0)
    if name == "swin_unetr" and importlib.util.find_spec("einops") is None:  # an optional MONAI dependency
        with pytest.raises(ImportError, match=r"`model\.name`.*needs the einops package"):
            build_model(ModelConfig(name, TINY[name]), spatial_dims=2, in_channels=3, out_channels=4)
        return
    size = 64 if name == "swin_unetr" else 32  # its deepest stage must keep more than one pixel
    model = build_model(ModelConfig(name, TINY[name]), spatial_dims=2, in_channels=3, out_channels=4,
                        image_size=(size, size))
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 4, size, size)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["basic_unet", "segresnet", "dynunet"])
def test_networks_in_3d(name):
    model = build_model(ModelConfig(name, TINY[name]), spatial_dims=3, in_channels=1, out_channels=2)
    assert model(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


@pytest.mark.parametrize(("name", "spatial_dims"), [("basic_unet", 2), ("dynunet", 2), ("basic_unet", 3)])
def test_deep_supervision_gives_full_size_heads_in_training_only(name, spatial_dims):
    model = build_model(ModelConfig(name, TINY[name]), spatial_dims=spatial_dims, in_channels=1, out_channels=3,
                        deep_supervision=True)
    size = (32,) * spatial_dims
    images = torch.randn(2, 1, *size)
    heads = model.train()(images)
    assert isinstance(heads, list) and len(heads) == 3
    assert all(head.shape == (2, 3, *size) for head in heads)
    sum(head.sum() for head in heads).backward()  # every head reaches the parameters
    assert all(p.grad is not None for p in model.parameters())
    main = model.eval()(images)
    assert isinstance(main, torch.Tensor) and main.shape == (2, 3, *size)
    torch.testing.assert_close(main, heads[0])  # instance norm: the main head is the same in both modes


def test_deep_supervision_weights_halve_and_sum_to_one():
    weights = deep_supervision_weights(4)
    assert sum(weights) == pytest.approx(1.0)
    assert [weights[i] / weights[i + 1] for i in range(3)] == pytest.approx([2.0, 2.0, 2.0])


def test_bad_model_configs_are_named():
    with pytest.raises(ValueError, match=r"`model\.name` to be one of .*Did you mean 'segresnet'"):
        build_model(ModelConfig("segresnt"), spatial_dims=2, in_channels=1, out_channels=2)
    with pytest.raises(ValueError, match=r"`train\.deep_supervision` to be False for model 'unet'"):
        build_model(ModelConfig("unet", TINY["unet"]), spatial_dims=2, in_channels=1, out_channels=2,
                    deep_supervision=True)
    with pytest.raises(ValueError, match=r"`model\.options` to be free of spatial_dims.*\['in_channels'\]"):
        build_model(ModelConfig("basic_unet", {"in_channels": 3}), spatial_dims=2, in_channels=1, out_channels=2)
    with pytest.raises(TypeError, match=r"`model\.options` to be options of MONAI BasicUNet.*'featuers'"):
        build_model(ModelConfig("basic_unet", {"featuers": [4] * 6}), spatial_dims=2, in_channels=1, out_channels=2)
    with pytest.raises(ValueError, match=r"`data\.image_size` to be multiples of 32 for swin_unetr"):
        build_model(ModelConfig("swin_unetr"), spatial_dims=2, in_channels=1, out_channels=2, image_size=(48, 40))
    with pytest.raises(ValueError, match=r"`model\.options\.deep_supr_num` to be in \[1, 2\]"):
        build_model(ModelConfig("dynunet", {**TINY["dynunet"], "deep_supr_num": 3}), spatial_dims=2, in_channels=1,
                    out_channels=2, deep_supervision=True)
    with pytest.raises(ValueError, match=r"`spatial_dims` to be 2 or 3"):
        build_model(ModelConfig(), spatial_dims=1, in_channels=1, out_channels=2)
