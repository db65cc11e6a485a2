"""The registry: listing, lookup with suggestions, creation with options, registration rules."""

from __future__ import annotations

import re

import pytest

import seglosses
from seglosses import Loss, create_loss, list_losses, loss_class, register_loss
from seglosses.registry import _REGISTRY

CORE_LOSSES = ("cross_entropy", "dice", "focal", "topk_ce")


@pytest.fixture
def scratch_registry():
    """Names registered inside a test are removed afterwards, so the global registry stays as imported."""
    before = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(before)


def test_list_losses_is_sorted_and_holds_the_core_losses():
    names = list_losses()
    assert names == sorted(names)
    assert set(CORE_LOSSES) <= set(names)


def test_list_losses_pattern():
    assert list_losses("cross*") == ["cross_entropy"]
    assert "dice" in list_losses("*dice*")
    assert list_losses("no_such_loss*") == []
    with pytest.raises(TypeError, match="`pattern`"):
        list_losses(3)


@pytest.mark.parametrize("name", list_losses())
def test_names_and_public_exports(name):
    assert re.fullmatch(r"[a-z][a-z0-9_]*", name), "registry names are lower-case snake_case"
    cls = loss_class(name)
    assert getattr(seglosses, cls.__name__) is cls, f"{cls.__name__} is not exported by seglosses"
    assert cls.__name__ in seglosses.__all__


def test_loss_class_suggests_close_names():
    with pytest.raises(ValueError, match=r"Expected `name` to be a registered loss, but got 'dicee'\. .*'dice'"):
        loss_class("dicee")
    with pytest.raises(ValueError, match="cross_entropy"):
        create_loss("cross_entropie")


def test_loss_class_without_close_names_points_to_list_losses():
    with pytest.raises(ValueError, match="list_losses") as raised:
        loss_class("zzzzzzzz")
    assert "Did you mean" not in str(raised.value)


def test_loss_class_name_must_be_a_string():
    with pytest.raises(TypeError, match="`name`"):
        loss_class(None)


def test_create_loss_passes_options():
    loss = create_loss("dice", squared=False, include_background=False)
    assert isinstance(loss, loss_class("dice"))
    assert loss.options["squared"] is False and loss.options["include_background"] is False
    with pytest.raises(TypeError):
        create_loss("dice", no_such_option=1)


def test_register_and_reregister(scratch_registry):
    @register_loss("scratch_loss")
    class ScratchLoss(Loss):
        pass

    assert loss_class("scratch_loss") is ScratchLoss
    assert ScratchLoss.registry_name == "scratch_loss"
    assert "scratch_loss" in list_losses()
    register_loss("scratch_loss")(ScratchLoss)  # the same class again is harmless (module reloads)

    class OtherLoss(Loss):
        pass

    with pytest.raises(ValueError, match="`name`"):
        register_loss("scratch_loss")(OtherLoss)
    assert loss_class("scratch_loss") is ScratchLoss


def test_scratch_registration_was_removed():
    assert "scratch_loss" not in list_losses()


@pytest.mark.parametrize("spelling", ["DiceCE", "dice-ce", "Dice_CE", "DICECE", "dice ce"])
def test_names_match_whatever_case_and_separators(spelling):
    assert loss_class(spelling) is loss_class("dice_ce")


def test_suggestions_come_from_the_normalised_name():
    with pytest.raises(ValueError, match=r"Did you mean \['dice_focal'"):
        loss_class("DiceFocall")


def test_unknown_option_lists_the_options_and_the_closest_one():
    with pytest.raises(TypeError, match=r"^Expected the options of `dice` to be among \['squared', .*'reduction'\], "
                                        r"but got 'includ_background'\. 'includ_background': did you mean "
                                        r"'include_background'\?"):
        create_loss("dice", includ_background=False)


@pytest.mark.parametrize(
    "name, option, pointer",
    [("dice_ce", "smooth_nr", "`eps`"), ("dice", "squared_pred", "`squared`"), ("tversky", "alpha", "`fp_weight`"),
     ("DiceCE", "to_onehot_y", "one-hot encoded internally"), ("dice", "weight", "`class_weights`")],
)
def test_peer_option_names_point_to_ours(name, option, pointer):
    with pytest.raises(TypeError, match=re.escape(pointer)):
        create_loss(name, **{option: True})


@pytest.mark.parametrize("name", list_losses())
def test_loss_options_are_the_constructor_keywords(name):
    from seglosses.registry import loss_options

    options = loss_options(name)
    assert "reduction" in options
    create_loss(name, reduction="sum")  # a valid option passes through
