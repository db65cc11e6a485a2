"""torch.compile: every registered loss is captured as one graph (``fullgraph=True``).

The host-synchronising value checks are skipped while dynamo traces (``value_checks_enabled()``
is False inside ``torch.compile``), so no check breaks the graph, and `topk_dice` takes its seeded
tie-breaking map from an opaque operator there (the same numbers as in eager mode). Capture is tested with the
"eager" backend for every registered loss (graph capture is what fails on a graph break; it takes
well under a second per loss) and with "aot_eager", which also traces the backward graph, for
one loss per family. Inductor code generation is not run here: it costs 15-90 s per loss on two
CPU cores; it was checked by hand for `dice` and `cross_entropy` (see docs/migrating.md).
"""

from __future__ import annotations

import pytest
import torch

from seglosses import create_loss, list_losses
from seglosses._checks import value_checks_enabled

# Losses that cannot be one graph, and why: their distance maps are computed outside torch.
NOT_COMPILABLE: dict[str, str] = {
    name: "its distance maps come from scipy's exact transform on the host (numpy), outside any graph"
    for name in ("boundary", "hausdorff_dt", "distance_map_ce", "region_wise", "active_boundary",
                 "boundary_aware")
}
# Options for losses whose defaults do not fit these tiny inputs.
TINY_INPUT_OPTIONS: dict[str, dict] = {
    "rmi": {"downsample": 1},  # 4x pooling of a 6x7 image leaves no 3x3 neighbourhood
}
# Inputs beyond (logits, labels) that a loss needs.
EXTRA_INPUTS = {
    "conditional_boundary": lambda logits: {"features": torch.linspace(-1, 1, 4 * 6 * 7, dtype=logits.dtype)
                                            .view(1, 4, 6, 7).expand(2, 4, 6, 7)},
}
# One loss per family for the backward trace (aot_eager): pixel, region, compound.
BACKWARD_TRACED = ("cross_entropy", "dice", "dice_ce")


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 6, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 6, 7), generator=generator)
    return logits, labels


def _compiled_matches_eager(name: str, backend: str) -> None:
    torch._dynamo.reset()
    loss = create_loss(name, **TINY_INPUT_OPTIONS.get(name, {}))
    logits, labels = _inputs()
    eager_logits = logits.clone().requires_grad_()
    compiled_logits = logits.clone().requires_grad_()
    inputs = EXTRA_INPUTS[name](logits) if name in EXTRA_INPUTS else {}
    expected = loss(eager_logits, labels, **inputs)
    expected.backward()
    compiled = torch.compile(loss, fullgraph=True, backend=backend)
    value = compiled(compiled_logits, labels, **inputs)
    value.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(compiled_logits.grad, eager_logits.grad)


@pytest.mark.parametrize("name", [n for n in list_losses() if n not in NOT_COMPILABLE])
def test_every_registered_loss_compiles_as_one_graph(name):
    _compiled_matches_eager(name, "eager")


@pytest.mark.parametrize("name", BACKWARD_TRACED)
def test_backward_graph_is_traced(name):
    _compiled_matches_eager(name, "aot_eager")


@pytest.mark.parametrize("noise_seed", [0, 1])
def test_topk_dice_breaks_near_ties_with_the_eager_noise_map(noise_seed):
    """Foreground probabilities equal to within 1e-9: the fixed U(0, 1e-6) map alone picks the six
    excluded pixels, whose gradient is exactly zero, so the gradients show which map was used."""
    torch._dynamo.reset()
    loss = create_loss("topk_dice", noise_seed=noise_seed)
    logits = torch.zeros(1, 2, 1, 12, dtype=torch.float64)
    logits[0, 1, 0] = torch.linspace(0.0, 4e-9, 12, dtype=torch.float64)
    labels = torch.ones(1, 1, 12, dtype=torch.long)

    def excluded_pixels(function):
        leaf = logits.clone().requires_grad_()
        function(leaf, labels).backward()
        return leaf.grad[0, 1, 0] == 0

    eager = excluded_pixels(loss)
    assert int(eager.sum()) == 6
    assert not torch.equal(eager, excluded_pixels(create_loss("topk_dice", noise_seed=1 - noise_seed)))
    assert torch.equal(excluded_pixels(torch.compile(loss, fullgraph=True, backend="eager")), eager)


def test_value_checks_are_off_only_while_compiling():
    seen = []

    def probe(x):
        seen.append(value_checks_enabled())
        return x + 1

    torch._dynamo.reset()
    torch.compile(probe, fullgraph=True, backend="eager")(torch.zeros(2))
    assert seen == [False] and value_checks_enabled()


def test_exclusions_name_registered_losses():
    assert set(NOT_COMPILABLE) <= set(list_losses())
