"""Options declared once (core/training/options.py): the trainer's config, `train --help`, the
studio's new-run form and config.json all come from the declaration, and the classic recipe
trains exactly as before the declaration existed."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from core.diffusion.registry import DEFAULT_SAMPLER, default_steps
from core.training import options, runs
from core.training.train import TrainConfig, lr_at, train, weights_digest
from core.diffusion.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_dataset, tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SHOWN = [o for o in options.OPTIONS if not o.internal]


def test_declaration_is_consistent_and_torch_free():
    import subprocess

    code = "import core.training.options, sys; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[3]).returncode == 0
    for option in options.OPTIONS:
        assert option.check(option.default) == option.default, option.name  # defaults are allowed
        assert option.parse(option.show(option.default)) == option.default, option.name
    for name, recipe in options.RECIPES.items():
        for key, value in recipe.items():
            assert options.BY_NAME[key].check(value) == value, (name, key)
    # The dataclass is generated from the declaration, field for field.
    from dataclasses import fields

    assert [(f.name, f.default) for f in fields(TrainConfig)] == [(o.name, o.default) for o in options.OPTIONS]


def test_every_option_appears_identically_in_help_form_and_config_json(tmp_path: Path, capsys):
    from ddpm_tui.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = "".join(capsys.readouterr().out.split())  # argparse wraps lines (and at hyphens)
    for option in SHOWN:
        for flag in option.cli_flags:
            assert flag in help_text, flag
        assert "".join(options.help_text(option).split()) in help_text, option.name
        if option.choices:
            assert "{" + ",".join(option.choices) + "}" in help_text, option.name

    # The form: one widget per option, its choices and its starting value from the declaration.
    from textual.app import App
    from textual.widgets import Checkbox, Input, Select

    from ddpm_tui.screens.newrun import NewRunScreen, form_defaults

    data = make_dataset(tmp_path / "dogs")
    result = {}

    class FormApp(App):
        def on_mount(self) -> None:
            self.push_screen(NewRunScreen(data, tmp_path / "runs", gpu=True), lambda run: result.update(run=run))

    async def go():
        app = FormApp()
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            form = app.screen
            defaults = {**form_defaults(True), "conditional": True}  # a set of 2+ breeds proposes breed labels
            for option in SHOWN:
                widget = form.query_one(f"#{option.name}")
                if option.type is bool:
                    assert isinstance(widget, Checkbox) and widget.value == defaults[option.name], option.name
                elif option.choices:
                    assert isinstance(widget, Select), option.name
                    assert [str(v) for _, v in widget._options] == list(option.choices), option.name
                    assert widget.value == defaults[option.name], option.name
                elif option.name != "device":
                    assert isinstance(widget, Input), option.name
                    assert option.parse(widget.value) == (str(data) if option.name == "data" else defaults[option.name])
            form.query_one("#name", Input).value = "r"
            await pilot.press("ctrl+r")
            await pilot.pause()
        return result["run"]

    run = asyncio.run(go())
    assert set(run.options) == {o.name for o in SHOWN}
    # What the form starts is `ddpm-tui train` with those values; config.json stores them all.
    from ddpm_tui.jobs import train_command
    from ddpm_tui.cli import build_parser

    values = {**run.options, "preset": "tiny", "image_size": 16, "T": 20, "epochs": 1, "samples": 0,
              "batch_size": 8, "amp": "off", "workers": 1}
    cmd = train_command("r", values, type("W", (), {"root": tmp_path})())
    args = build_parser().parse_args(cmd[3:])
    for option in SHOWN:
        assert getattr(args, option.name, option.default) == values[option.name], option.name
    config = TrainConfig(**values)
    train(config, tmp_path / "runs" / "r")
    saved = runs.read_config(tmp_path / "runs" / "r")
    for option in options.OPTIONS:
        assert saved[option.name] == getattr(config, option.name), option.name


def test_recipes_resolve_and_explicit_values_win():
    classic = TrainConfig.from_dict(options.resolve({"data": "/d", "recipe": "classic"}))
    # The declared defaults are the classic recipe's, but for how grids are drawn (every recipe
    # draws with the project's default sampler; config.json files older than the option, with DDIM).
    assert classic == TrainConfig(data="/d", sample_sampler=DEFAULT_SAMPLER, sample_steps=default_steps(DEFAULT_SAMPLER))
    assert TrainConfig.from_dict({"data": "/d"}).sample_sampler == "ddim"
    new = TrainConfig.from_dict(options.resolve({"data": "/d"}))  # a new run without --recipe
    assert new == TrainConfig.from_dict(options.resolve({"data": "/d", "recipe": options.NEW_RUN_RECIPE}))
    assert (new.recipe, new.prediction, new.batch_size) == ("fast", "v", 32)
    fast = TrainConfig.from_dict(options.resolve({"data": "/d", "recipe": "fast", "lr": 1e-4}))
    assert (fast.prediction, fast.optimizer, fast.batch_size, fast.lr) == ("v", "adamw", 32, 1e-4)
    # A saved run: the saved values stay unless given, even if the recipe's defaults change.
    saved = {**fast.to_dict(), "batch_size": 8}
    again = TrainConfig.from_dict(options.resolve({"epochs": 3}, base=saved))
    assert again.batch_size == 8 and again.epochs == 3 and again.prediction == "v"


def test_old_config_json_without_the_new_keys_loads_as_the_classic_recipe():
    old = {"data": "/d", "run": "r", "preset": "tiny", "image_size": 32, "schedule": "linear", "T": 1000,
           "lr": 0.0003, "batch_size": 16, "epochs": 500, "samples": 10, "save_frequency": 10,
           "ema_decay": 0.995, "grad_clip": 0, "amp": "auto", "model": {}, "classes": ["a"]}
    config = TrainConfig.from_dict(old)
    assert config.recipe == "classic" and config.optimizer == "adam" and config.prediction == "eps"
    assert isinstance(config.grad_clip, float)
    assert config.refused_changes(old) == []
    assert config.refused_changes({**old, "preset": "classic"}) == ["preset: run has 'classic', asked for 'tiny'"]


def test_former_name_seed_is_read_as_classic_everywhere():
    """Runs and scripts from before the rename say recipe/preset "seed": the same training."""
    for given in ({"recipe": "seed"}, {"recipe": "seed", "preset": "seed"}):
        config = TrainConfig.from_dict(options.resolve({"data": "/d", **given}))
        assert config == TrainConfig.from_dict(options.resolve({"data": "/d", "recipe": "classic"})) and (config.recipe, config.preset) == ("classic", "classic")
    assert options.recipe_defaults("seed") == options.recipe_defaults("classic")
    assert TrainConfig(data="/d", recipe="seed", preset="seed") == TrainConfig(data="/d")
    assert options.BY_NAME["recipe"].parse("seed") == "classic"
    assert options.BY_NAME["preset"].parse("seed") == "classic"
    with pytest.raises(ValueError, match="unknown schedule 'seed'"):  # only renamed choices are mapped
        options.BY_NAME["schedule"].parse("seed")
    # A config.json written before the rename: loads as classic, and resuming it changes nothing.
    old = {"data": "/d", "run": "r", "recipe": "seed", "preset": "seed", "image_size": 64}
    config = TrainConfig.from_dict(old)
    assert (config.recipe, config.preset) == ("classic", "classic")
    config.validate()
    assert config.refused_changes(old) == []
    assert config.model_config(0) == TrainConfig(data="/d").model_config(0)
    # --help lists today's names and says what they were
    assert "classic" in options.help_text(options.BY_NAME["recipe"]) and "formerly seed" in options.BY_NAME["recipe"].help
    assert options.BY_NAME["recipe"].choices == ("classic", "fast", "edm")


def test_lr_warmup_and_cosine():
    c = TrainConfig(data="/d", lr=1.0, lr_warmup=4, lr_schedule="cosine")
    assert [round(lr_at(c, s, 100), 4) for s in (0, 1, 3)] == [0.25, 0.4999, 0.9978]
    assert lr_at(c, 100, 100) == 0.0
    assert lr_at(TrainConfig(data="/d"), 57, 100) == 3e-4  # the original: constant


# Losses of the 8 steps below, recorded from the trainer before core/training/options.py existed
# (main at fcb0027, this machine's CPU; tiny preset, conditional, seed 0).
CLASSIC_LOSSES = [1.3005449771881104, 1.13553786277771, 1.0972224473953247, 1.0499027967453003,
               1.0916169881820679, 1.0518476963043213, 1.0425430536270142, 1.0048296451568604]


def test_classic_recipe_reproduces_the_previous_trainer(tmp_path: Path):
    data = make_dataset(tmp_path / "dogs")
    cfg = tiny(data, conditional=True, epochs=2, samples=0)
    train(cfg, tmp_path / "a")
    losses = [r["loss"] for r in runs.read_metrics(tmp_path / "a")[0]]
    assert losses == pytest.approx(CLASSIC_LOSSES, rel=1e-5)
    # The classic recipe spelled out option by option trains the same weights bit for bit.
    asked = ("data", "preset", "image_size", "T", "batch_size", "epochs", "samples", "save_frequency",
             "sample_steps", "log_every", "amp", "workers", "conditional")
    explicit = TrainConfig(**{**options.recipe_defaults("classic"), **{k: getattr(cfg, k) for k in asked}})
    train(explicit, tmp_path / "b")
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert weights_digest(a["model"]) == weights_digest(b["model"])
    # The fast recipe's optimiser side trains and differs (AdamW, warm-up, clip, EMA warm-up).
    fast = tiny(data, epochs=1, samples=0, optimizer="adamw", weight_decay=0.01, lr_warmup=3,
                lr_schedule="cosine", grad_clip=1.0, ema_decay=0.999, ema_warmup=10)
    assert train(fast, tmp_path / "c")["state"] == "finished"
    lrs = [r["lr"] for r in runs.read_metrics(tmp_path / "c")[0]]
    assert lrs[0] == pytest.approx(3e-4 / 3) and lrs[-1] < lrs[1]


def test_new_run_form_is_cpu_aware_and_proposes_sizes(tmp_path: Path):
    from textual.app import App
    from textual.widgets import Input, Select

    from ddpm_tui.screens.newrun import NewRunScreen

    class FormApp(App):
        def on_mount(self) -> None:
            self.push_screen(NewRunScreen(tmp_path, tmp_path / "runs", gpu=False))

    async def go():
        app = FormApp()
        async with app.run_test(size=(100, 40)) as pilot:
            await pilot.pause()
            form = app.screen
            value = lambda name: form.query_one(f"#{name}").value  # noqa: E731
            # No GPU: a small network at a small size, with a time budget, so samples come in minutes.
            assert (value("preset"), value("image_size"), value("max_time")) == ("res-small", "32", "1800")
            assert (value("recipe"), value("prediction")) == (options.NEW_RUN_RECIPE, "v")
            form.query_one("#preset", Select).value = "classic"
            await pilot.pause()
            assert value("image_size") == str(options.PRESET_IMAGE_SIZE["classic"])
            form.query_one("#recipe", Select).value = "fast"
            await pilot.pause()
            assert (value("optimizer"), value("prediction"), value("batch_size")) == ("adamw", "v", "32")
            form.query_one("#recipe", Select).value = "classic"
            await pilot.pause()
            assert (value("optimizer"), value("prediction"), value("batch_size")) == ("adam", "eps", "16")
            form.query_one("#lr", Input).value = "-1"
            form.query_one("#name", Input).value = "r"
            with pytest.raises(ValueError, match="Learning rate"):
                form.collect()

    asyncio.run(go())
