"""How this folder was made: a run written by main at d1622b1 (before the rename of "seed" to
"classic"), with recipe "seed" and preset "seed", then resumed there for 2 more steps to
record the weights that resuming it must give. Run with that commit's code:

    git worktree add /tmp/old d1622b1
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/old python tests/ddpm_tui/old_run_d1622b1/make_fixture.py OUT

The "seed" preset is narrowed to TEST_NETWORK first (the real one is 93M parameters, a
370 MB checkpoint); the test narrows "classic" the same way, so both build one network.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

TEST_NETWORK = dict(base_channels=8, channel_mults=(1, 2), mid_mult=1, attn_down=(False, True),
                    attn_up=(True, False), time_dim=16)
ARGS = ["--recipe", "seed", "--preset", "seed", "--image-size", "16", "--samples", "0",
        "--workers", "1", "--amp", "off", "--device", "cpu", "--quiet"]
FIRST_STEPS, RESUMED_STEPS = 3, 5


def main(out: Path) -> None:
    import core.unet as unet
    from core.train import weights_digest
    from ddpm_tui.cli import main as cli

    torch.set_num_threads(1)
    unet.PRESETS["seed"] = unet.UNetConfig(preset="seed", **TEST_NETWORK)
    ws = out / "ws"
    data = ws / "data" / "demo"
    assert cli(["--workspace", str(ws), "data", "demo", "--per-class", "4"]) == 0
    run = ws / "runs" / "old"
    assert cli(["--workspace", str(ws), "train", "--run", "old", "--data", str(data),
                "--max-steps", str(FIRST_STEPS), *ARGS]) == 0
    fixture = out / "fixture"
    fixture.mkdir()
    for name in ("config.json", "status.json", "metrics.jsonl"):
        shutil.copy(run / name, fixture / name)
    (fixture / "checkpoints").mkdir()
    shutil.copy(run / "checkpoints" / "last.pt", fixture / "checkpoints" / "last.pt")
    assert cli(["--workspace", str(ws), "train", "--run", "old", "--resume", "--data", str(data),
                "--max-steps", str(RESUMED_STEPS), *ARGS]) == 0
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    expected = {"step": ckpt["step"], "model": weights_digest(ckpt["model"]),
                "ema": weights_digest(ckpt["ema"]["shadow"])}
    (fixture / "expected_after_resume.json").write_text(json.dumps(expected, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
