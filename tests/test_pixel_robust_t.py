"""Robust T-loss (pixel.py) against the paper's formula and the reference code, on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import gammaln

from seglosses import create_loss
from seglosses.pixel import RobustTLoss, robust_t_loss


def paper_formula(p: np.ndarray, t: np.ndarray, nu: float, lam: float = 1.0) -> float:
    """Gonzalez-Jimenez et al., eq. (5): -log of a multivariate Student-t, Sigma^-1 = e^lam I, one image."""
    delta = (p - t).ravel()
    d = delta.size
    log_det_sigma = -d * lam
    mahalanobis = math.exp(lam) * float(delta @ delta)
    return (-gammaln((nu + d) / 2) + gammaln(nu / 2) + d / 2 * math.log(math.pi * nu) + 0.5 * log_det_sigma
            + (nu + d) / 2 * math.log1p(mahalanobis / nu))


def reference_code(p: np.ndarray, t: np.ndarray, eta: float, eps: float = 1e-8) -> float:
    """The TLoss.forward of the authors' repository (robust-tloss), transcribed for one image: note its
    nu = exp(eta) + eps and its (D/2)(eta + eps) for (D/2) log nu."""
    d = p.size
    lambdas = np.ones_like(p)
    nu = math.exp(eta) + eps
    first = -gammaln((nu + d) / 2)
    second = gammaln(nu / 2)
    third = -0.5 * np.sum(lambdas + eps)
    fourth = d / 2 * math.log(math.pi)
    fifth = d / 2 * (eta + eps)
    numerator = np.sum((p - t) ** 2 * np.exp(lambdas + eps))
    sixth = (nu + d) / 2 * math.log(1 + numerator / nu)
    return first + second + third + fourth + fifth + sixth


def test_binary_matches_paper_formula_and_reference_code():
    generator = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(3, 1, 4, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (3, 4, 5), generator=generator)
    ours = robust_t_loss(logits, labels, log_nu=0.3, reduction="none")
    probs = torch.sigmoid(logits[:, 0]).numpy()
    for image in range(3):
        target = labels[image].double().numpy()
        expected = paper_formula(probs[image], target, nu=math.exp(0.3) + 1e-8)
        assert ours[image].item() == pytest.approx(expected, rel=1e-10)
        assert ours[image].item() == pytest.approx(reference_code(probs[image], target, eta=0.3), rel=1e-6)


def test_multiclass_is_the_mean_of_per_channel_losses_on_softmax_probabilities():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 3, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 3, 4), generator=generator)
    probs = logits.softmax(dim=1).numpy()
    one_hot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).double().numpy()
    expected = [np.mean([paper_formula(probs[b, c], one_hot[b, c], nu=math.e + 1e-8, lam=0.5) for c in range(3)])
                for b in range(2)]
    ours = robust_t_loss(logits, labels, log_precision=0.5, reduction="none")
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10)


def test_ignored_pixels_leave_the_dimension():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 1, 4, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (1, 4, 4), generator=generator)
    ignored = labels.clone()
    ignored[0, 0] = 255  # the first row is ignored: D = 12
    ours = robust_t_loss(logits, ignored, ignore_index=255)
    kept = torch.sigmoid(logits[0, 0, 1:]).numpy()
    assert ours.item() == pytest.approx(paper_formula(kept, labels[0, 1:].double().numpy(), nu=math.e + 1e-8))


def test_small_nu_down_weights_the_errors_of_a_noisy_image():
    """Robustness: a pixel's gradient shrinks when the rest of its image is badly wrong (label noise),
    strongly for small nu; for large nu (the Gaussian limit) it barely changes, as with MSE."""
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    mostly_right = torch.full((1, 1, 8, 8), -6.0, dtype=torch.float64)
    mostly_right[0, 0, 0, 0] = 0.0  # the pixel whose gradient is compared
    noisy = mostly_right.clone()
    noisy[0, 0, 4:] = 6.0  # half of the image confidently wrong

    def gradient_at_pixel(logits: torch.Tensor, log_nu: float) -> float:
        logits = logits.clone().requires_grad_(True)
        robust_t_loss(logits, labels, log_nu=log_nu).backward()
        return logits.grad[0, 0, 0, 0].item()

    def ratio(log_nu: float) -> float:
        return gradient_at_pixel(noisy, log_nu) / gradient_at_pixel(mostly_right, log_nu)

    assert ratio(0.0) < 0.1
    assert ratio(12.0) > 0.9


def test_nu_is_a_parameter_that_an_optimiser_trains_and_state_dict_keeps():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 6, 6, generator=generator)
    labels = torch.randint(0, 2, (2, 6, 6), generator=generator)
    criterion = create_loss("robust_t")
    assert isinstance(criterion, RobustTLoss) and criterion.nu == pytest.approx(math.e, rel=1e-6)
    optimizer = torch.optim.SGD(criterion.parameters(), lr=1e-3)
    before = criterion.log_nu.item()
    criterion(logits, labels).backward()
    optimizer.step()
    assert criterion.log_nu.item() != before
    restored = RobustTLoss()
    restored.load_state_dict(criterion.state_dict())
    assert restored.log_nu.item() == criterion.log_nu.item()
    torch.testing.assert_close(restored(logits, labels), criterion(logits, labels))


def test_module_passes_its_parameter_to_the_function():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 4, 4, generator=generator)
    labels = torch.randint(0, 3, (2, 4, 4), generator=generator)
    criterion = RobustTLoss(log_nu=2.5)
    torch.testing.assert_close(criterion.per_image(logits, labels),
                               robust_t_loss(logits, labels, log_nu=2.5, reduction="none"))


def test_bad_arguments():
    logits, labels = torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="`log_nu`"):
        robust_t_loss(logits, labels, log_nu=torch.ones(2))
    with pytest.raises(TypeError, match="`log_nu`"):
        RobustTLoss(log_nu="3")
