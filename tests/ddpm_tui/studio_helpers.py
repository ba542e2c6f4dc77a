"""Helpers for the studio and command-line tests: a temporary workspace with a tiny generated
dataset, a tiny checkpoint made with core APIs, a helper to wait for the UI without sleeping
fixed amounts (no timing thresholds: only generous upper bounds on waiting), and the CLI run
in-process with its one-line errors checked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ddpm_tui.workspace import Workspace

BREEDS = {"beagle": 5, "corgi": 3, "pug": 2}


def make_dataset(data_dir: Path, counts: dict[str, int] = BREEDS, size: int = 16, seed: int = 0) -> None:
    """Per-breed folders of small PNGs with a breed-specific base colour plus noise."""
    rng = np.random.default_rng(seed)
    for b_i, (breed, n) in enumerate(sorted(counts.items())):
        folder = data_dir / breed
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([(70 * b_i) % 256, (140 + 50 * b_i) % 256, (200 - 60 * b_i) % 256])
        for i in range(n):
            img = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{breed}_{i:03d}.png")


def make_checkpoint_run(ws: Workspace, name: str = "tiny-run", *, image_size: int = 16, T: int = 10,
                        conditional: bool = False, state: str = "finished", ema_kind: str = "exp",
                        edm: bool = False) -> Path:
    """A run directory with a real (untrained) tiny checkpoint, config and status (an EDM one
    with ``edm``). ``ema_kind`` "power": a power EMA over 12 made-up updates, with snapshots at
    steps 4 and 8."""
    import torch

    from core.diffusion.checkpoint import save_checkpoint
    from core.diffusion.process import DiffusionConfig, build_process
    from core.diffusion.ema import EMA
    from core.training.runs import checkpoints_dir, write_config, write_status
    from core.diffusion.unet import UNet, get_preset

    torch.manual_seed(0)
    classes = sorted(BREEDS) if conditional else []
    config = get_preset("tiny", image_size=image_size, num_classes=len(classes))
    model = UNet(config)
    from core.diffusion.edm import EDMConfig

    dconf = EDMConfig() if edm else DiffusionConfig(T=T, schedule="linear")
    build_process(dconf)
    run_dir = ws.run_dir(name)
    ema = EMA(model) if ema_kind == "exp" else _power_ema(model, checkpoints_dir(run_dir))
    save_checkpoint(checkpoints_dir(run_dir) / "last.pt", model_config=config, diffusion_config=dconf,
                    model_state=model.state_dict(), ema_state=ema.state_dict(), step=12, epoch=3,
                    extra={"classes": classes})
    write_config(run_dir, {"preset": "tiny", "image_size": image_size, "T": T, "epochs": 3, "batch_size": 4,
                           "conditional": conditional, "classes": classes, "ema_kind": ema_kind})
    write_status(run_dir, state=state, pid=0, host="test", step=12, epoch=3, last_loss=0.5,
                 message="finished 3 epochs")
    return run_dir


def _power_ema(model, checkpoints: Path):
    import torch

    from core.diffusion.ema_snapshots import write_snapshot
    from core.diffusion.power_ema import PowerEMA

    ema = PowerEMA(model)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 13):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
        ema.update(model)
        if step in (4, 8):
            write_snapshot(checkpoints, ema, step)
    return ema


async def wait_for(pilot, condition, timeout: float = 60.0, what: str = "condition") -> None:
    """Let the app run until condition() is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)


def run_async(coro):
    return asyncio.run(coro)


def cli(workspace: Workspace, *args: str) -> int:
    """`ddpm-tui --workspace W ARGS...`, in this process (capsys sees its output)."""
    from ddpm_tui.cli import main

    return main(["--workspace", str(workspace.root), *args])


def one_line_error(capsys, *needles: str) -> None:
    """What the command wrote to stderr is one `ddpm-tui: error:` line holding every needle."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ddpm-tui: error:"), err
    for needle in needles:
        assert needle in err, err


async def fill_sample_form(app, pilot, **fields: str) -> None:
    """On the Sample screen: wait until a checkpoint is chosen, set the fields (widget id ->
    value: steps="2", sampler="ddpm"), then leave them so keys go to the screen."""
    from textual.widgets import Select

    screen = app.screen
    await wait_for(pilot, lambda: screen.query_one("#checkpoint", Select).value != Select.BLANK, 20,
                   "the checkpoint choice")
    for name, value in fields.items():
        screen.query_one(f"#{name}").value = value
    app.set_focus(None)


def make_app(workspace: Workspace, **kw):
    """The studio as the tests drive it: no system monitor, true colour, unless told."""
    from ddpm_tui.app import StudioApp

    kw.setdefault("sysmon", False)
    kw.setdefault("color_mode", "truecolor")
    return StudioApp(workspace, **kw)


def text_of(widget) -> str:
    """What a Static shows, as text."""
    return str(widget.render())
