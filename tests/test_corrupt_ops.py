"""Corruption operations, seeds, the grid and the list parsers."""

from __future__ import annotations

import pytest
import torch

from nemesis_analysis.corruption.ops import (
    DEFAULT_FACTORS,
    DEFAULT_REPS,
    DEFAULT_STDS,
    NO_CORRUPTION,
    Corruption,
    apply_corruptions,
    corrupt_context,
    expand_grid,
    parse_float_list,
    parse_int_list,
    replace,
    replace_seed,
    rescale,
)
from nemesis_analysis.errors import ConfigError

CTX = torch.tensor([[1.0, 2.0], [3.0, -4.0], [0.5, 0.25]])  # (n_ctx=3, width=2)


def _csc(n_cls: int = 4, n_ctx: int = 5, width: int = 6) -> torch.Tensor:
    return torch.randn(n_cls, n_ctx, width, generator=torch.Generator().manual_seed(3))


def test_rescale_values_and_no_mutation() -> None:
    before = CTX.clone()
    out = rescale(CTX, 1, 2.5)
    assert torch.equal(out, torch.tensor([[1.0, 2.0], [7.5, -10.0], [0.5, 0.25]]))
    assert torch.equal(CTX, before)  # input untouched
    assert out.data_ptr() != CTX.data_ptr()


def test_rescale_factor_zero_and_one() -> None:
    assert torch.equal(rescale(CTX, 0, 0.0)[0], torch.zeros(2))
    assert torch.equal(rescale(CTX, 2, 1.0), CTX)


def test_rescale_csc_every_class_only_that_position() -> None:
    ctx = _csc()
    out = rescale(ctx, 3, -2.0)
    torch.testing.assert_close(out[:, 3], -2.0 * ctx[:, 3])
    keep = [0, 1, 2, 4]
    assert torch.equal(out[:, keep], ctx[:, keep])


def test_replace_values_reproducible_from_generator() -> None:
    out = replace(CTX, 1, 0.5, torch.Generator().manual_seed(11))
    expected_row = torch.randn(2, generator=torch.Generator().manual_seed(11)) * 0.5
    torch.testing.assert_close(out[1], expected_row)
    assert torch.equal(out[[0, 2]], CTX[[0, 2]])
    assert torch.equal(CTX[1], torch.tensor([3.0, -4.0]))  # input untouched


def test_replace_std_zero_is_exact_zero_vector() -> None:
    out = replace(CTX, 0, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], torch.zeros(2))
    assert torch.equal(out[1:], CTX[1:])


def test_replace_csc_independent_draws_per_class() -> None:
    ctx = _csc()
    out = replace(ctx, 2, 1.0, torch.Generator().manual_seed(5))
    expected = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))  # (n_cls, width)
    torch.testing.assert_close(out[:, 2], expected)
    assert not torch.equal(out[0, 2], out[1, 2])  # classes differ
    keep = [0, 1, 3, 4]
    assert torch.equal(out[:, keep], ctx[:, keep])


def test_replace_std_matches_request_for_large_width() -> None:
    ctx = torch.zeros(2, 4096)
    for std in (1e-3, 0.02, 1.0):
        row = replace(ctx, 0, std, torch.Generator().manual_seed(42))[0]
        assert row.std().item() == pytest.approx(std, rel=0.05)
        assert abs(row.mean().item()) < 0.05 * std


def test_replace_keeps_dtype() -> None:
    out = replace(CTX.to(torch.float16), 0, 0.1, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float16


def test_ops_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="std"):
        replace(CTX, 0, -0.1, torch.Generator())
    with pytest.raises(ValueError, match="outside 0..2"):
        rescale(CTX, 3, 2.0)
    with pytest.raises(ValueError, match="outside"):
        replace(CTX, -1, 1.0, torch.Generator())


def test_replace_seed_deterministic_and_distinct() -> None:
    seed = replace_seed("run-a", 3, 0.02, 1)
    assert seed == replace_seed("run-a", 3, 0.02, 1)
    assert 0 <= seed < 2**63
    assert replace_seed("run-a", 0, 0, 0) == replace_seed("run-a", 0, 0.0, 0)  # int/float std same key
    variants = {
        replace_seed(run, p, s, r)
        for run in ("run-a", "run-b")
        for p in range(16)
        for s in DEFAULT_STDS
        for r in range(3)
    }
    assert len(variants) == 2 * 16 * len(DEFAULT_STDS) * 3


def test_corruption_key_and_validation() -> None:
    c = Corruption("replace", 2, 0.1, 1)
    assert c.key() == ("replace", 2, 0.1, 1)
    assert NO_CORRUPTION.key() == ("none", -1, 1.0, 0)
    with pytest.raises(ConfigError, match="unknown corruption op"):
        Corruption("shuffle", 0, 1.0, 0)
    with pytest.raises(ConfigError):
        Corruption("none", 0, 1.0, 0)
    with pytest.raises(ConfigError):
        Corruption("replace", 0, -1.0, 0)


def test_expand_grid_default_counts_and_order() -> None:
    grid = expand_grid(16)
    assert len(grid) == 1 + 16 * 10 + 16 * 9 * 3 == 593
    assert grid[0] == Corruption("none", -1, 1.0, 0)
    assert sum(c.op == "rescale" for c in grid) == 16 * len(DEFAULT_FACTORS)
    assert sum(c.op == "replace" for c in grid) == 16 * len(DEFAULT_STDS) * DEFAULT_REPS
    assert grid[1] == Corruption("rescale", 0, 0.0, 0)
    assert grid[1 + 160] == Corruption("replace", 0, 0.0, 0)
    assert grid[1 + 160 + 2] == Corruption("replace", 0, 0.0, 2)
    assert len({c.key() for c in grid}) == len(grid)  # keys unique


def test_expand_grid_subsets_and_dedupe() -> None:
    grid = expand_grid(8, ops=("replace", "replace"), positions=[3, 3, 0], stds=[0.1, 0.1, 0], reps=2)
    assert [c.key() for c in grid] == [
        ("none", -1, 1.0, 0),
        ("replace", 3, 0.1, 0),
        ("replace", 3, 0.1, 1),
        ("replace", 3, 0.0, 0),
        ("replace", 3, 0.0, 1),
        ("replace", 0, 0.1, 0),
        ("replace", 0, 0.1, 1),
        ("replace", 0, 0.0, 0),
        ("replace", 0, 0.0, 1),
    ]
    # Rescale only ignores stds (an empty std list is fine there).
    grid = expand_grid(4, ops=("rescale",), factors=(0, 0.0, 2), stds=())
    assert len(grid) == 1 + 4 * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"positions": [16]}, "outside 0..15"),
        ({"positions": [-1]}, "outside 0..15"),
        ({"stds": [0.1, -0.01]}, "std"),
        ({"ops": ()}, "no corruption ops"),
        ({"positions": []}, "no positions"),
        ({"factors": ()}, "no factors"),
        ({"stds": ()}, "no stds"),
        ({"ops": ("rescale", "flip")}, "unknown corruption op 'flip'"),
        ({"reps": 0}, "reps"),
        ({"factors": (1.0, float("nan"))}, "not finite"),
    ],
)
def test_expand_grid_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        expand_grid(16, **kwargs)


def test_apply_corruptions_shapes_values_reproducible() -> None:
    corruptions = [NO_CORRUPTION, Corruption("rescale", 1, 0.0, 0), Corruption("replace", 2, 0.5, 1)]
    out = apply_corruptions(CTX, corruptions, "run-x")
    assert out.shape == (3, 3, 2)
    assert torch.equal(out[0], CTX)
    assert torch.equal(out[1], rescale(CTX, 1, 0.0))
    gen = torch.Generator().manual_seed(replace_seed("run-x", 2, 0.5, 1))
    assert torch.equal(out[2], replace(CTX, 2, 0.5, gen))
    # Order-independent: the replace row alone equals its row in the stack.
    alone = apply_corruptions(CTX, [corruptions[2]], "run-x")
    assert torch.equal(alone[0], out[2])
    assert torch.equal(apply_corruptions(CTX, corruptions, "run-x"), out)
    # Another run draws differently; another rep too.
    assert not torch.equal(apply_corruptions(CTX, [corruptions[2]], "run-y")[0], out[2])
    assert not torch.equal(corrupt_context(CTX, Corruption("replace", 2, 0.5, 0), "run-x"), out[2])


def test_apply_corruptions_csc_and_empty() -> None:
    ctx = _csc()
    grid = expand_grid(5, positions=[1], factors=(0.5,), stds=(0.1,), reps=2)
    out = apply_corruptions(ctx, grid, "r")
    assert out.shape == (4, 4, 5, 6)  # (variants, n_cls, n_ctx, width)
    keep = [0, 2, 3, 4]
    assert torch.equal(out[:, :, keep], ctx[:, keep].expand(4, -1, -1, -1))
    assert apply_corruptions(ctx, [], "r").shape == (0, 4, 5, 6)


def test_parse_float_list() -> None:
    assert parse_float_list("0,0.1,1") == (0.0, 0.1, 1.0)
    assert parse_float_list(" 1e-4 , 2 ") == (1e-4, 2.0)
    for bad in ("", "0,,1", "0,a", "1,nan", "inf"):
        with pytest.raises(ConfigError):
            parse_float_list(bad, "--factors")
    with pytest.raises(ConfigError, match="--stds: 'x'"):
        parse_float_list("0.1,x", "--stds")


def test_parse_int_list() -> None:
    assert parse_int_list("0,3,5-7") == (0, 3, 5, 6, 7)
    assert parse_int_list("4") == (4,)
    assert parse_int_list(" 2 - 3 ,1") == (2, 3, 1)
    for bad in ("", "1,", "a", "1.5", "-1", "7-5", "1-2-3"):
        with pytest.raises(ConfigError):
            parse_int_list(bad, "--positions")
    with pytest.raises(ConfigError, match="backwards"):
        parse_int_list("7-5")


def test_a_position_error_counts_flat_positions_not_n_ctx():
    # PLOT with 2 prompts of n_ctx=2: 4 flat positions; the message must not call 4 "n_ctx".
    with pytest.raises(ConfigError) as error:
        expand_grid(4, positions=[4])
    assert "outside 0..3" in str(error.value) and "n_ctx=4" not in str(error.value) and "N*n_ctx" in str(error.value)
