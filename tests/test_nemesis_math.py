"""Nemesis math against hand computation: norms, PUN, PAN, omega, the beta mix."""

from __future__ import annotations

import math

import pytest
import torch

from nemesis_analysis.errors import ConfigError
from nemesis_analysis.training.nemesis import (
    NORM_TYPES,
    choose_pan_positions,
    nemesis_loss,
    omega,
    pan_alpha,
    pan_loss,
    position_norms,
    pun_loss,
    rescale_positions_variants,
)

# Generic context, 3 positions x width 2, with norms easy to do by hand.
CTX = torch.tensor([[3.0, 4.0], [0.0, -2.0], [1.0, -1.0]])
# Hand-computed per-position norms of CTX.
EXPECTED = {
    "l2": [5.0, 2.0, math.sqrt(2.0)],
    "l1": [7.0, 2.0, 2.0],
    "inf": [4.0, 2.0, 1.0],
}


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_position_norms_generic(norm_type: str) -> None:
    norms = position_norms(CTX, norm_type)
    assert norms.shape == (3,)
    torch.testing.assert_close(norms, torch.tensor(EXPECTED[norm_type]))


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_position_norms_csc_averages_over_classes(norm_type: str) -> None:
    # Class 0 is CTX, class 1 is 2*CTX except position 1 which is [6, 8]:
    # the CSC norm is the mean over classes of each class's norm.
    other = 2 * CTX
    other[1] = torch.tensor([6.0, 8.0])
    ctx = torch.stack([CTX, other])  # (n_cls=2, n_ctx=3, width=2)
    second = {"l2": 10.0, "l1": 14.0, "inf": 8.0}[norm_type]
    e = EXPECTED[norm_type]
    expected = torch.tensor([(e[0] + 2 * e[0]) / 2, (e[1] + second) / 2, (e[2] + 2 * e[2]) / 2])
    torch.testing.assert_close(position_norms(ctx, norm_type), expected)


def test_position_norms_rejects_unknown_norm_and_bad_shape() -> None:
    with pytest.raises(ValueError, match="l2, l1, inf"):
        position_norms(CTX, "l3")
    with pytest.raises(ConfigError):
        position_norms(CTX, "L2")
    with pytest.raises(ValueError, match="shape"):
        position_norms(torch.zeros(4), "l2")


def test_pun_value_and_gradient() -> None:
    ctx = CTX.clone().requires_grad_(True)
    weight = 3.0
    loss = pun_loss(ctx, weight)
    # 3 * mean(5, 2, sqrt 2)
    assert loss.item() == pytest.approx(3.0 * (5.0 + 2.0 + math.sqrt(2.0)) / 3.0)
    loss.backward()
    # d/dp_i of weight * mean_i ||p_i||_2 = weight / n * p_i / ||p_i||
    norms = torch.tensor(EXPECTED["l2"])[:, None]
    torch.testing.assert_close(ctx.grad, weight / 3 * CTX / norms)
    torch.testing.assert_close(ctx.grad, torch.tensor([[0.6, 0.8], [0.0, -1.0], [1 / math.sqrt(2), -1 / math.sqrt(2)]]))


def test_pun_l1_and_inf_values() -> None:
    assert pun_loss(CTX, 2.0, "l1").item() == pytest.approx(2.0 * 11.0 / 3.0)
    assert pun_loss(CTX, 2.0, "inf").item() == pytest.approx(2.0 * 7.0 / 3.0)


def test_pun_csc_gradient() -> None:
    ctx = torch.stack([CTX, 2 * CTX]).requires_grad_(True)  # (2, 3, 2)
    pun_loss(ctx, 1.0).backward()
    # loss = 1/3 sum_i 1/2 sum_c ||p_ci||: gradient 1/6 * p_ci/||p_ci||, unit vectors equal for both classes.
    unit = CTX / torch.tensor(EXPECTED["l2"])[:, None]
    torch.testing.assert_close(ctx.grad, torch.stack([unit, unit]) / 6)


def test_pan_alpha_strict_improvement_only() -> None:
    # Base correct count 10; rescaled: higher, equal (tie), lower, higher.
    alpha = pan_alpha(10, torch.tensor([12, 10, 7, 11]), weight=50.0)
    torch.testing.assert_close(alpha, torch.tensor([50.0, 0.0, 0.0, 50.0]))
    assert alpha.dtype == torch.float32
    # Tensor base works the same.
    alpha_t = pan_alpha(torch.tensor(10), torch.tensor([12, 10, 7, 11]), weight=1.0)
    torch.testing.assert_close(alpha_t, torch.tensor([1.0, 0.0, 0.0, 1.0]))


def test_pan_loss_normalised_by_active_count() -> None:
    positions = torch.tensor([0, 1, 2])
    alpha = torch.tensor([2.0, 0.0, 2.0])
    # (2*5 + 0*2 + 2*sqrt2) / 2 active
    expected = (2 * 5.0 + 2 * math.sqrt(2.0)) / 2
    assert pan_loss(CTX, positions, alpha).item() == pytest.approx(expected)
    # One active: no averaging beyond that one.
    assert pan_loss(CTX, torch.tensor([1, 2]), torch.tensor([3.0, 0.0])).item() == pytest.approx(6.0)
    # l1 uses the l1 norms.
    assert pan_loss(CTX, positions, alpha, "l1").item() == pytest.approx((14.0 + 4.0) / 2)


def test_pan_loss_all_zero_alpha_is_zero_with_gradient_graph() -> None:
    ctx = CTX.clone().requires_grad_(True)
    loss = pan_loss(ctx, torch.tensor([0, 2]), torch.zeros(2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(ctx.grad) == 0


def test_pan_loss_gradient_only_on_active_positions() -> None:
    ctx = CTX.clone().requires_grad_(True)
    pan_loss(ctx, torch.tensor([0, 1]), torch.tensor([4.0, 0.0])).backward()
    expected = torch.zeros_like(CTX)
    expected[0] = 4.0 * torch.tensor([0.6, 0.8])  # alpha * unit vector / 1 active
    torch.testing.assert_close(ctx.grad, expected)


def test_pan_loss_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        pan_loss(CTX, torch.tensor([0, 1]), torch.ones(3))


def test_choose_pan_positions_distinct_sorted_reproducible() -> None:
    a = choose_pan_positions(16, 5, torch.Generator().manual_seed(7))
    b = choose_pan_positions(16, 5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert a.dtype == torch.long and a.shape == (5,)
    assert len(set(a.tolist())) == 5
    assert a.tolist() == sorted(a.tolist())
    assert all(0 <= p < 16 for p in a.tolist())
    # All positions when NP == n_ctx.
    assert choose_pan_positions(4, 4, torch.Generator().manual_seed(0)).tolist() == [0, 1, 2, 3]
    # Different seeds explore different positions.
    draws = {tuple(choose_pan_positions(16, 3, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(draws) > 10


@pytest.mark.parametrize("num_positions", [0, -1, 17])
def test_choose_pan_positions_rejects_bad_count(num_positions: int) -> None:
    with pytest.raises(ValueError, match="num_positions"):
        choose_pan_positions(16, num_positions, torch.Generator())


def test_rescale_positions_variants_generic() -> None:
    variants = rescale_positions_variants(CTX, torch.tensor([2, 0]), 0.5)
    assert variants.shape == (2, 3, 2)
    expected0 = CTX.clone()
    expected0[2] *= 0.5
    expected1 = CTX.clone()
    expected1[0] *= 0.5
    assert torch.equal(variants[0], expected0)
    assert torch.equal(variants[1], expected1)


def test_rescale_positions_variants_csc() -> None:
    ctx = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1))  # (n_cls, n_ctx, width)
    variants = rescale_positions_variants(ctx, torch.tensor([1, 3]), 0.0)
    assert variants.shape == (2, 4, 5, 3)
    for j, p in enumerate([1, 3]):
        assert torch.count_nonzero(variants[j, :, p]) == 0  # every class zeroed at p
        keep = [i for i in range(5) if i != p]
        assert torch.equal(variants[j][:, keep], ctx[:, keep])  # everything else exact


@pytest.mark.parametrize("num_epochs", [50, 200])
def test_omega_sigmoid_closed_form(num_epochs: int) -> None:
    def closed(t: int) -> float:
        return 1.0 - 1.0 / (1.0 + math.exp(-0.2 * (t - num_epochs / 2)))

    for t in (0, num_epochs // 2, num_epochs - 1):
        assert omega(t, num_epochs) == pytest.approx(closed(t), rel=1e-12, abs=1e-15)
    assert omega(num_epochs // 2, num_epochs) == pytest.approx(0.5)


def test_omega_known_values() -> None:
    assert omega(0, 50) == pytest.approx(0.9933071490757153)  # 1 - sigmoid(-5)
    assert omega(25, 50) == pytest.approx(0.5)
    assert omega(49, 50) == pytest.approx(1 - 1 / (1 + math.exp(-4.8)))  # ~0.00816
    assert omega(0, 200) == pytest.approx(1 - 1 / (1 + math.exp(20)))  # ~1 - 2e-9
    assert omega(199, 200) == pytest.approx(1 / (1 + math.exp(19.8)), rel=1e-9)  # ~2.5e-9
    # Far beyond the end: no overflow, tends to 0.
    assert 0.0 <= omega(10_000, 50) < 1e-300


def test_omega_constant_and_invalid() -> None:
    assert omega(0, 50, "constant") == 1.0
    assert omega(49, 50, "constant") == 1.0
    with pytest.raises(ValueError, match="sigmoid, constant"):
        omega(0, 50, "cosine")
    with pytest.raises(ConfigError):
        omega(0, 0)
    with pytest.raises(ConfigError):
        omega(-1, 50)


def test_nemesis_loss_beta_mix() -> None:
    pun, pan = torch.tensor(2.0), torch.tensor(10.0)
    assert nemesis_loss(pun, pan, 0.25, 0.5).item() == pytest.approx(0.5 * (0.25 * 2.0 + 0.75 * 10.0))
    assert nemesis_loss(pun, pan, 1.0, 0.8).item() == pytest.approx(0.8 * 2.0)  # PUN only
    assert nemesis_loss(pun, pan, 0.0, 0.8).item() == pytest.approx(0.8 * 10.0)  # PAN only


def test_nemesis_loss_gradient_flows_through_both_terms() -> None:
    ctx = CTX.clone().requires_grad_(True)
    loss = nemesis_loss(pun_loss(ctx, 1.0), pan_loss(ctx, torch.tensor([0]), torch.tensor([1.0])), 0.5, 1.0)
    loss.backward()
    unit = CTX / torch.tensor(EXPECTED["l2"])[:, None]
    expected = 0.5 * unit / 3
    expected[0] += 0.5 * unit[0]
    torch.testing.assert_close(ctx.grad, expected)


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_nemesis_loss_rejects_beta_outside_unit_interval(beta: float) -> None:
    with pytest.raises(ValueError, match="beta"):
        nemesis_loss(torch.tensor(1.0), torch.tensor(1.0), beta, 1.0)
