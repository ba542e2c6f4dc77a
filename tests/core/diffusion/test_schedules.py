"""Beta schedules against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from core.diffusion.schedules import SCHEDULES, make_betas


def test_known_names() -> None:
    assert SCHEDULES == ("linear", "cosine", "sigmoid")
    for name in SCHEDULES:
        betas = make_betas(name, 1000)
        assert betas.dtype == torch.float64
        assert betas.shape == (1000,)


@pytest.mark.parametrize("T", [1, 2, 10, 1000, 4000])
def test_linear_is_the_originals_linspace_for_any_T(T: int) -> None:
    betas = make_betas("linear", T)
    expected = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)] if T > 1 else [1e-4]
    assert torch.allclose(betas, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-18)
    if T > 1:
        assert betas[-1].item() == pytest.approx(0.02, abs=1e-15)  # no scaling by T, as the original


def _cosine_f(t: float, T: int, s: float = 0.008) -> float:
    return math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2


@pytest.mark.parametrize("T", [10, 100, 1000])
def test_cosine_alpha_bar_matches_closed_form_where_unclipped(T: int) -> None:
    betas = make_betas("cosine", T)
    alpha_bars = torch.cumprod(1 - betas, 0)
    checked = 0
    for t in range(T):
        # alpha_bars[t] is the alpha_bar after step t, i.e. f(t + 1) / f(0); exact until the cap bites.
        if any(betas[: t + 1] >= 0.999):
            break
        assert alpha_bars[t].item() == pytest.approx(_cosine_f(t + 1, T) / _cosine_f(0, T), rel=1e-10, abs=1e-15)
        checked += 1
    assert checked >= T - 1  # only the last beta may be capped
    # each beta is 1 - f(t+1)/f(t)
    for t in (0, T // 2, T - 2):
        assert betas[t].item() == pytest.approx(1 - _cosine_f(t + 1, T) / _cosine_f(t, T), rel=1e-10)


@pytest.mark.parametrize("T", [1, 10, 1000])
def test_cosine_cap_respected(T: int) -> None:
    betas = make_betas("cosine", T)
    assert betas.max().item() <= 0.999
    assert betas.min().item() > 0
    # f(T) = cos(pi/2)^2 = 0 would make the last beta 1; the cap holds it at 0.999.
    assert betas[-1].item() == pytest.approx(0.999)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [2, 50, 1000])
def test_alpha_bar_strictly_decreasing_and_in_range(name: str, T: int) -> None:
    alpha_bars = torch.cumprod(1 - make_betas(name, T), 0)
    assert torch.all(alpha_bars[1:] < alpha_bars[:-1])
    assert alpha_bars[0] < 1 and alpha_bars[-1] > 0


def test_linear_final_alpha_bar_near_zero_at_T1000() -> None:
    # The original's setting leaves almost no signal at t = T - 1 (what the sampler starts from).
    alpha_bar_T = torch.prod(1 - make_betas("linear", 1000)).item()
    assert 1e-5 < alpha_bar_T < 1e-4


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match=r"unknown schedule 'quadratic'.*linear, cosine"):
        make_betas("quadratic", 1000)


@pytest.mark.parametrize("T", [0, -5, 2.5, True])
def test_bad_T(T: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        make_betas("linear", T)  # type: ignore[arg-type]


# -- sigmoid (Jabri et al. 2023, lucidrains' start -3, end 3, tau 1) ---------------------------


def _sigmoid_ab(t: float, T: int) -> float:
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    return (sig(3) - sig(t / T * 6 - 3)) / (sig(3) - sig(-3))


@pytest.mark.parametrize("T", [10, 100, 1000])
def test_sigmoid_alpha_bar_matches_closed_form_where_unclipped(T: int) -> None:
    betas = make_betas("sigmoid", T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    alpha_bars = torch.cumprod(1 - betas, 0)
    # alpha_bar(T) = 0 exactly in closed form: only the last beta is capped (at 0.999)
    for t in range(T - 1):
        assert alpha_bars[t].item() == pytest.approx(_sigmoid_ab(t + 1, T), rel=1e-10, abs=1e-15)
    assert betas[-1].item() == pytest.approx(0.999)
    assert betas[:-1].max().item() < 0.999
    for t in (0, T // 2, T - 2):
        assert betas[t].item() == pytest.approx(1 - _sigmoid_ab(t + 1, T) / _sigmoid_ab(t, T), rel=1e-10)


# -- zero terminal SNR (Lin et al. 2024) -----------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [2, 10, 1000])
def test_zero_terminal_snr_ends_at_zero_and_keeps_the_shape(name: str, T: int) -> None:
    plain = torch.cumprod(1 - make_betas(name, T), 0).sqrt()
    betas = make_betas(name, T, zero_terminal_snr=True)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert betas[-1].item() == 1.0 and torch.all(betas[:-1] < 1) and torch.all(betas > 0)
    sab = torch.cumprod(1 - betas, 0).sqrt()
    assert sab[-1].item() == 0.0  # alpha_bar_T = 0: the last step is pure noise
    assert sab[0].item() == pytest.approx(plain[0].item(), rel=1e-12)  # the first step is unchanged
    # Lin et al. Alg. 1: sqrt(ab) is shifted by its last value and scaled to keep its first one
    first, last = plain[0].item(), plain[-1].item()
    expected = (plain - last) * first / (first - last)
    assert torch.allclose(sab, expected, rtol=1e-9, atol=1e-12)
    assert torch.equal(make_betas(name, T), make_betas(name, T, zero_terminal_snr=False))
