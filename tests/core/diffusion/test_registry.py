"""Each vocabulary is declared once in core.diffusion.registry (name + one-line help); the
implementation implements exactly the declared names and the options offer them."""

from __future__ import annotations

import inspect

import pytest
import torch

from core.diffusion import registry, samplers, schedules
from core.diffusion.process import _LOSS_WEIGHTS, _MIN_SNR_WEIGHTS, Diffusion, DiffusionConfig
from core.training import options


def test_every_name_has_one_line_of_help() -> None:
    for table in (registry.SCHEDULE_HELP, registry.PREDICTION_HELP, registry.LOSS_WEIGHTING_HELP):
        assert table and all(text and "\n" not in text for text in table.values())
    for name, spec in registry.SAMPLER_SPECS.items():
        assert spec.name == name and spec.label and spec.help and "\n" not in spec.help
        assert (spec.default_steps is None) == (not spec.uses_steps)


def test_options_offer_the_declared_names() -> None:
    choices = {o.name: o.choices for o in options.OPTIONS}
    assert choices["schedule"] == registry.SCHEDULE_NAMES
    assert choices["prediction"] == registry.PREDICTION_NAMES
    assert choices["loss_weighting"] == registry.LOSS_WEIGHTING_NAMES


@pytest.mark.parametrize("name", registry.SCHEDULE_NAMES)
def test_every_declared_schedule_builds(name: str) -> None:
    betas = schedules.make_betas(name, 50)
    assert betas.shape == (50,) and bool(((betas > 0) & (betas < 1)).all())


def test_schedules_implement_exactly_the_declared_names() -> None:
    assert set(schedules.BETAS) == set(registry.SCHEDULE_NAMES)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.make_betas("nope", 10)


@pytest.mark.parametrize("prediction", registry.PREDICTION_NAMES)
@pytest.mark.parametrize("weighting", registry.LOSS_WEIGHTING_NAMES)
def test_every_declared_target_and_weighting_works(prediction: str, weighting: str) -> None:
    d = Diffusion(DiffusionConfig(T=20, schedule="cosine", prediction=prediction, loss_weighting=weighting))
    x0, eps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.randn(2, 3, 4, 4)
    t = 7
    x_t = d.q_sample(x0, t, eps)
    out = d.training_target(x0, t, eps)
    assert torch.allclose(d.model_x0(x_t, t, out), x0, atol=1e-4)
    assert torch.allclose(d.model_eps(x_t, t, out), eps, atol=1e-4)
    assert bool(torch.isfinite(d.loss_weights).all()) and bool((d.loss_weights > 0).all())


def test_process_implements_exactly_the_declared_names() -> None:
    assert set(_MIN_SNR_WEIGHTS) == set(registry.PREDICTION_NAMES)
    assert set(_LOSS_WEIGHTS) == set(registry.LOSS_WEIGHTING_NAMES)
    with pytest.raises(ValueError, match="unknown prediction"):
        DiffusionConfig(prediction="nope")


def test_samplers_implement_exactly_the_table() -> None:
    """Every entry resolves to an iterator in core.diffusion.samplers with the options its
    entry says it takes, and every iterator there has an entry."""
    implemented = {name for name, fn in inspect.getmembers(samplers, inspect.isfunction)
                   if name.startswith("iter_") and fn.__module__ == samplers.__name__}
    declared = set()
    for spec in registry.SAMPLER_SPECS.values():
        fn = spec.resolve()
        declared.add(fn.__name__)
        params = inspect.signature(fn).parameters
        assert ("steps" in params) == spec.uses_steps and ("eta" in params) == spec.uses_eta, spec.name
        if spec.uses_steps:
            assert params["steps"].default == spec.default_steps
    assert implemented == declared


def test_check_implemented_says_what_differs() -> None:
    with pytest.raises(ImportError, match=r"declared but not implemented \['b'\].*not declared \['c'\]"):
        registry.check_implemented("things", ("a", "b"), {"a": 1, "c": 2})
