"""Slice-to-volume stacking by case id."""

from __future__ import annotations

import pytest
import torch

from seglosses.metrics import SliceCollector, stack_slices


def test_stack_slices_orders_by_index_within_each_case():
    slices = torch.arange(6).view(6, 1, 1)
    volumes = stack_slices(slices, ["a", "b", "a", "b", "a", "b"], slice_indices=[2, 0, 0, 1, 1, 2])
    assert list(volumes) == ["a", "b"]
    assert volumes["a"].flatten().tolist() == [2, 4, 0]
    assert volumes["b"].flatten().tolist() == [1, 3, 5]


def test_arrival_order_without_indices_and_across_batches():
    collector = SliceCollector()
    for start in (0, 2):
        batch = torch.arange(start, start + 2).view(2, 1, 1)
        collector.add(batch, batch + 10, case_ids=["p1", "p2"])
    assert len(collector) == 2
    volumes = {v.case_id: v for v in collector.pop_volumes()}
    assert volumes["p1"].pred.flatten().tolist() == [0, 2]
    assert volumes["p2"].target.flatten().tolist() == [11, 13]
    assert len(collector) == 0


def test_cases_of_different_sizes_and_spacing():
    collector = SliceCollector()
    collector.add(
        torch.zeros(2, 4, 5, dtype=torch.long),
        torch.zeros(2, 4, 5, dtype=torch.long),
        ["a", "a"],
        spacing=(10.0, 1.5, 1.5),
    )
    collector.add(
        torch.zeros(1, 3, 3, dtype=torch.long),
        torch.zeros(1, 3, 3, dtype=torch.long),
        ["b"],
        spacing=[(5.0, 1.0, 1.0)],
    )
    volumes = {v.case_id: v for v in collector.pop_volumes()}
    assert volumes["a"].pred.shape == (2, 4, 5) and volumes["a"].spacing == (10.0, 1.5, 1.5)
    assert volumes["b"].pred.shape == (1, 3, 3) and volumes["b"].spacing == (5.0, 1.0, 1.0)


def test_merge_unions_the_states_of_several_collectors():
    first, second = SliceCollector(), SliceCollector()
    first.add(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), ["a"], [1])
    second.add(torch.ones(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long), ["a"], [0])
    merged = SliceCollector()
    merged.merge([first.state(), second.state()])
    (volume,) = merged.pop_volumes()
    assert volume.pred[:, 0, 0].tolist() == [1, 0]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda c, x: c.add(x, x, ["a"]), ValueError, "Expected `case_ids` to be a sequence of 2 entries"),
        (lambda c, x: c.add(x, x, "ab"), TypeError, "Expected `case_ids` to be a sequence"),
        (lambda c, x: c.add(x, x, ["a", "a"], [0, 0]), ValueError, "Expected `slice_indices` to be unique"),
        (
            lambda c, x: c.add(x, x, ["a", "a"], [0.0, 1.0]),
            TypeError,
            "Expected `slice_indices` to be integers",
        ),
        (
            lambda c, x: c.add(x[None], x[None], ["a"]),
            ValueError,
            r"Expected `pred` to be a batch of 2D slices",
        ),
        (
            lambda c, x: c.add(x.float(), x, ["a", "b"]),
            TypeError,
            "Expected `pred` to be an integer label map",
        ),
        (
            lambda c, x: c.add(x, x[:, :1], ["a", "b"]),
            ValueError,
            "Expected `target` to be of the same shape",
        ),
        (lambda c, x: c.add(x, x, ["a", "b"], spacing=(1.0, 1.0)), ValueError, "Expected `spacing`"),
        (lambda c, x: c.add(x, x, ["a", "b"], spacing=(1.0, 0.0, 1.0)), ValueError, "finite and positive"),
        (
            lambda c, x: c.add(x, x, ["a", "a"], spacing=[(1, 1, 1), (2, 1, 1)]),
            ValueError,
            "the same for every",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(SliceCollector(), torch.zeros(2, 3, 3, dtype=torch.long))


def test_a_scored_case_is_closed():
    collector = SliceCollector()
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    collector.add(labels, labels, ["a"])
    collector.pop_volumes()
    with pytest.raises(ValueError, match="Expected `case_ids` to be cases that were not already stacked"):
        collector.add(labels, labels, ["a"])


def test_slices_of_one_case_must_share_a_shape():
    collector = SliceCollector()
    collector.add(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), ["a"])
    with pytest.raises(ValueError, match="Expected `pred` to be slices of one shape"):
        collector.add(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long), ["a"])
