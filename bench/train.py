"""Training throughput of the real trainer (core.training.train.train) on this machine.

    python -m bench.train [--presets tiny small classic] [--steps 4] [--rounds 2] [--batch-size 16]

For each preset, runs the trainer on the same synthetic 64x64 breed-folder dataset in two
modes, alternated for --rounds rounds: fp32 (the baseline, --amp off) and --amp auto (bf16
where the device does it fast), each run a few steps with samples off, and reads images/s
from metrics.jsonl (one line per step). Prints the median over the steps after each run's
first (warm-up), the
bf16/fp32 ratio measured in the same run, and the estimated time of one classic-size epoch
(14,000 images, the original's scraped dataset).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import fmt_seconds as _fmt_short
from core.training import runs
from core.diffusion.device import autocast_dtype, resolve_device
from core.training.train import TrainConfig, train
from core.diffusion.registry import current_name
from core.diffusion.unet import count_parameters, get_preset, UNet

SEED_EPOCH_IMAGES = 14_000


def fmt_seconds(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 7200 else _fmt_short(s)


def make_images(root: Path, count: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        breed = root / f"breed{i % 2}"
        breed.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(breed / f"{i}.png")
    return root


def measure(data: Path, workdir: Path, preset: str, amp: str, steps: int, args) -> list[float]:
    """images/s of each step after the first, from the trainer's own metrics."""
    cfg = TrainConfig(data=str(data), preset=preset, image_size=args.image_size, batch_size=args.batch_size,
                      epochs=1000, max_steps=steps + 1, samples=0, save_frequency=1000, log_every=1,
                      amp=amp, device=args.device, workers=1, channels_last=args.channels_last)
    run = Path(tempfile.mkdtemp(prefix=f"{preset}-{amp}-", dir=workdir))
    final = train(cfg, run)
    if final.get("state") != "finished":
        raise SystemExit(f"{preset}/{amp}: trainer ended {final.get('state')}: {final.get('message')}")
    records, _ = runs.read_metrics(run)
    return [r["images_per_s"] for r in records[1:] if r.get("images_per_s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "classic"])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after 1 warm-up)")
    parser.add_argument("--classic-steps", "--seed-steps", type=int, default=2, help="timed steps per run for the classic preset")
    parser.add_argument("--rounds", type=int, default=2, help="fp32/auto runs alternated this many times")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    auto = autocast_dtype(device, "auto")
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"batch {args.batch_size}, {args.image_size}x{args.image_size}, amp auto -> "
          f"{str(auto).replace('torch.', '') if auto else 'fp32'}")
    print(f"{'preset':<7} {'params':>11} {'fp32 img/s':>11} {'auto img/s':>11} {'ratio':>6} "
          f"{'14k-image epoch (best)':>24}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp_path = Path(tmp)
        data = make_images(tmp_path / "data", max(2 * args.batch_size, 32), args.image_size)
        for preset in args.presets:
            params = count_parameters(UNet(get_preset(preset, image_size=args.image_size)))
            start = time.perf_counter()
            steps = args.classic_steps if current_name(preset) == "classic" else args.steps
            modes = ["off"] + (["auto"] if auto is not None else [])
            samples: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(args.rounds):  # alternate so machine noise hits both modes alike
                for mode in modes:
                    samples[mode] += measure(data, tmp_path, preset, mode, steps, args)
            fp32 = statistics.median(samples["off"])
            mixed = statistics.median(samples["auto"]) if "auto" in samples else None
            best = max(fp32, mixed or 0.0)
            ratio = f"{mixed / fp32:.2f}x" if mixed else "-"
            mixed_text = f"{mixed:.1f}" if mixed else "(=fp32)"
            print(f"{preset:<7} {params:>11,} {fp32:>11.1f} {mixed_text:>11} {ratio:>6} "
                  f"{fmt_seconds(SEED_EPOCH_IMAGES / best):>24}   ({time.perf_counter() - start:.0f} s to measure)",
                  flush=True)


if __name__ == "__main__":
    main()
