"""The sampler table (core.diffusion.registry.SAMPLER_SPECS) is the one list of samplers: a
fake entry added at test time is offered by `ddpm-tui sample/eval --sampler`, listed by the
Sample screen (with the fields its entry says it takes), dispatched by generate() and named
by sampler_tag(). Each check fails if its consumer goes back to a list of its own."""

from __future__ import annotations


import pytest
from textual.widgets import Input, Select

from core.diffusion import registry
from core.diffusion.process import Diffusion, DiffusionConfig
from core.diffusion.registry import SamplerSpec
from ddpm_tui.cli import build_parser

from studio_helpers import run_async

CALLS: list[dict] = []


def iter_fake(model, diffusion, shape, *, steps: int = 3, clip_x0: bool = True, **common):
    """A sampler only this test knows: DDIM underneath, recording what it was given."""
    from core.diffusion.samplers import iter_ddim

    CALLS.append({"steps": steps, "clip_x0": clip_x0, **{k: common[k] for k in ("guidance",) if k in common}})
    return iter_ddim(model, diffusion, shape, steps=steps, clip_x0=clip_x0, **common)


FAKE = SamplerSpec("fake", f"{__name__}:iter_fake", "Fake Sampler", "a sampler only the tests know",
                   uses_steps=True, uses_eta=False, default_steps=3)


@pytest.fixture
def fake_sampler(monkeypatch):
    monkeypatch.setitem(registry.SAMPLER_SPECS, "fake", FAKE)
    CALLS.clear()
    return FAKE


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_cli_offers_the_table(fake_sampler, command, capsys) -> None:
    args = build_parser().parse_args([command, "some-run", "--sampler", "fake"])
    assert args.sampler == "fake"
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "fake: a sampler only the tests know" in out
    for name in registry.SAMPLER_NAMES:
        assert f"{name}:" in out


def test_cli_refuses_a_name_not_in_the_table(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sample", "some-run", "--sampler", "fake"])


def test_generate_dispatches_through_the_table(fake_sampler) -> None:
    from core.diffusion.sampling import SampleRequest, generate, sampler_tag
    from core.diffusion.unet import UNet, get_preset

    request = SampleRequest(n=2, sampler="fake", steps=4, seed=0, amp="off")
    model = UNet(get_preset("tiny", image_size=16))
    steps = list(generate((model, Diffusion(DiffusionConfig(T=10))), request, device="cpu"))
    assert CALLS == [{"steps": 4, "clip_x0": True, "guidance": 1.0}]  # steps given (uses_steps), no eta
    assert len(steps) == 4 and steps[-1].images is not None and steps[-1].images.shape == (2, 16, 16, 3)
    assert sampler_tag(request, 10) == "fake4"
    with pytest.raises(ValueError, match="unknown sampler 'nope'.*fake"):
        SampleRequest(sampler="nope")


def test_steps_default_to_the_samplers_own() -> None:
    """No --steps (or steps=None) means the chosen sampler's table default, everywhere."""
    from core.diffusion.sampling import SampleRequest
    from core.quality.evaluate import EvalSettings

    for name, spec in registry.SAMPLER_SPECS.items():
        if spec.uses_steps:
            assert SampleRequest(sampler=name).steps == spec.default_steps
            assert EvalSettings(sampler=name).steps == spec.default_steps
    assert SampleRequest().sampler == EvalSettings().sampler == registry.DEFAULT_SAMPLER
    assert build_parser().parse_args(["sample", "r"]).steps is None  # resolved by the request


def test_sampler_tag_follows_the_entry() -> None:
    from core.diffusion.sampling import SampleRequest, sampler_tag

    assert sampler_tag(SampleRequest(sampler="ddpm", steps=7), 1000) == "ddpm1000"
    assert sampler_tag(SampleRequest(sampler="ddim", steps=50, eta=0.5), 1000) == "ddim50-eta0.5"
    assert sampler_tag(SampleRequest(sampler="ddim", steps=5000), 1000) == "ddim1000"
    assert sampler_tag(SampleRequest(sampler="heun", steps=20, eta=0.5), 1000) == "heun20"


def test_sample_screen_lists_the_table(fake_sampler, workspace) -> None:
    from ddpm_tui.app import StudioApp

    async def go():
        app = StudioApp(workspace, start_mode="sample", sysmon=False, color_mode="truecolor")
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            select = app.screen.query_one("#sampler", Select)
            offered = [(str(prompt), value) for prompt, value in select._options if value is not Select.BLANK]
            assert offered == [(s.label, s.name) for s in registry.SAMPLER_SPECS.values()]
            assert ("Fake Sampler", "fake") in offered and select.value == registry.DEFAULT_SAMPLER
            steps, eta = app.screen.query_one("#steps", Input), app.screen.query_one("#eta", Input)
            assert steps.value == str(registry.default_steps(registry.DEFAULT_SAMPLER))
            for name, spec in registry.SAMPLER_SPECS.items():
                select.value = name
                await pilot.pause()
                assert (steps.disabled, eta.disabled) == (not spec.uses_steps, not spec.uses_eta), name
                if spec.uses_steps:  # an untouched step count follows the sampler's own default
                    assert steps.value == str(spec.default_steps), name
            steps.value = "37"  # one a person typed stays whatever the sampler
            for name in ("ddim", "fake"):
                select.value = name
                await pilot.pause()
                assert steps.value == "37"

    run_async(go())
