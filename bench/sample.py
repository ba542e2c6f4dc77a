"""Time to sample images from the ``classic`` preset: the original's procedure against ours, same run.

    python -m bench.sample [--images 10] [--original-steps 4] [--sampler ddim] [--ddim-steps 50] [--repeats 3]

- the original's procedure: 1000 DDPM steps, one image at a time, fp32, the original's computational
  choices (bench/original_baseline.py: nn.MultiheadAttention with weights, repeated time
  embedding, NCHW). 1000 x images forward passes take hours on a CPU, so a few steps are
  timed at batch 1 and the total is extrapolated (median step x 1000 x images); the output
  says so.
- ours: DDIM with --ddim-steps steps, all images as one batch, bf16 autocast where the
  device has fast bf16 (else fp32, printed), channels_last, SDPA attention: timed end to end.

The network is randomly initialised (the timing does not depend on the weights); both sides
share the same weights. Steps of the original's procedure are measured in short bursts interleaved with our runs so
that load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from bench.common import fmt_seconds, median
from bench.original_baseline import to_original_style
from core.diffusion.device import autocast_dtype
from core.diffusion.process import Diffusion, DiffusionConfig
from core.diffusion.registry import SAMPLER_SPECS, sampler_spec
from core.diffusion.samplers import iter_ddpm, run_to_end
from core.diffusion.unet import UNet, count_parameters, get_preset


def _sampler_fn(name: str):
    """Run sampler ``name`` (from the table) to the end: (model, diffusion, shape, **kw) -> images."""
    iterate = sampler_spec(name).resolve()
    return lambda *args, **kw: run_to_end(iterate(*args, **kw))


def _timed_samplers() -> list[str]:
    """The table's samplers that take a step count (the original's DDPM is timed separately)."""
    return sorted(s.name for s in SAMPLER_SPECS.values() if s.uses_steps)


class ChannelsLastInput(nn.Module):
    """Feeds the network channels_last inputs (its weights are converted too)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last), t, labels)


def time_original_steps(model: nn.Module, diffusion: Diffusion, size: int, n: int, seed: int) -> list[float]:
    """Seconds per DDPM step at batch 1 in fp32, for the first n steps (+1 untimed warm-up)."""
    stamps: list[float] = []
    steps = iter_ddpm(model, diffusion, (1, 3, size, size), seed=seed, autocast=None)
    start = time.perf_counter()
    for i, _ in enumerate(steps):
        now = time.perf_counter()
        stamps.append(now - start)
        start = now
        if i == n:  # step 0 is the warm-up
            steps.close()
            break
    return stamps[1:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sample", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--original-steps", "--seed-steps", type=int, default=4, help="DDPM steps of the original's procedure timed per burst (extrapolated)")
    p.add_argument("--sampler", choices=_timed_samplers(), default="ddim", help="our sampler")
    p.add_argument("--ddim-steps", type=int, default=50, help="our sampler's steps")
    p.add_argument("--repeats", type=int, default=3, help="full runs of ours (median reported)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto", help="autocast for ours")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if min(args.images, args.original_steps, args.ddim_steps, args.repeats) < 1:
        p.error("--images, --original-steps, --ddim-steps and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    config = get_preset("classic")
    size, T = config.image_size, 1000
    diffusion = Diffusion(DiffusionConfig(T=T, schedule="linear"))
    torch.manual_seed(0)
    model = UNet(config).eval()
    original_model = to_original_style(model).eval()  # same weights, the original's way of computing
    ours = ChannelsLastInput(model).eval()
    dtype = autocast_dtype("cpu", args.dtype)

    print(f"Sampling {args.images} images from preset classic ({count_parameters(model):,} parameters, "
          f"random init), {size}x{size}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"the original's procedure: DDPM {T} steps, one image at a time, fp32, original-style network "
          f"(bench/original_baseline.py); {args.original_steps} steps timed per burst, total EXTRAPOLATED")
    sample = _sampler_fn(args.sampler)
    print(f"ours: {args.sampler} {args.ddim_steps} steps, {args.images} images in one batch, "
          f"autocast {str(dtype).replace('torch.', '') if dtype else 'off (fp32)'}, channels_last, SDPA; timed end to end")

    original_step_times: list[float] = []
    our_times: list[float] = []
    original_step_times += time_original_steps(original_model, diffusion, size, args.original_steps, seed=0)
    sample(ours, diffusion, (args.images, 3, size, size), steps=2, seed=0, autocast=dtype)  # warm-up
    for r in range(args.repeats):
        start = time.perf_counter()
        sample(ours, diffusion, (args.images, 3, size, size), steps=args.ddim_steps, seed=r, autocast=dtype)
        our_times.append(time.perf_counter() - start)
        original_step_times += time_original_steps(original_model, diffusion, size, args.original_steps, seed=r + 1)
        print(f"  run {r + 1}/{args.repeats}: ours {fmt_seconds(our_times[-1])}, "
              f"original step {fmt_seconds(median(original_step_times[-args.original_steps:]))}", flush=True)

    step_med = median(original_step_times)
    original_total = step_med * T * args.images
    our_med = median(our_times)
    fmt_all = lambda ts: ", ".join(fmt_seconds(s) for s in ts)  # noqa: E731
    print(f"original step (batch 1, fp32): median {fmt_seconds(step_med)} over {len(original_step_times)} steps")
    print(f"original total: {fmt_seconds(step_med)} x {T} steps x {args.images} images = "
          f"{fmt_seconds(original_total)} (extrapolated)")
    print(f"ours total: median {fmt_seconds(our_med)}  ({fmt_all(our_times)}); "
          f"{fmt_seconds(our_med / args.ddim_steps)} per step of {args.images} images")
    print(f"speed-up: {original_total / our_med:.0f}x  (target >= 50x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
