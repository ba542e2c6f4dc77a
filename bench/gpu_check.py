"""What to run first on a GPU machine: one prepared script, about 5 minutes on one GPU.

    python -m bench.gpu_check [--device cuda] [--batch 128] [--peak-tflops 989] [--out DIR]
    python -m bench.gpu_check --device cpu --quick        # the same path on a CPU, in a minute

Sections (each prints its figures; a failing section says why and the others still run):
1. env: torch, CUDA, the GPU, compute capability, memory, what `--amp auto` picks there.
2. oracle: the Gaussian oracle on the device (for N(mu, s^2) data the ideal noise predictor
   is closed form; DDIM-50, DPM-Solver++(2M)-20 and Heun-20 driven by it must give the
   data's mean and spread) — the samplers' math on this device's kernels.
3. loop: the CLI as a user runs it: `data demo`, `train` 2N steps straight, N + N steps with a
   stop between, weights digests compared (bit-exact resume on this device, or not), then
   `sample` with DPM-Solver++ 20 steps.
4. nccl: `torchrun --nproc_per_node 1 -m ddpm_tui train ...` (NCCL on CUDA, gloo on a CPU).
5. speed: the seed preset's (--quick: tiny's) bare training step (bf16 autocast where chosen, fused Adam, no data,
   no EMA) at --batch, NCHW and channels_last, with FLOPs and MFU against --peak-tflops;
   `torch.compile`'s first-step (compile) time and compiled images/s; the real trainer's
   images/s (metrics.jsonl, median after warm-up) and its ratio to the bare step.
6. sampling: 10 seed-preset images (random weights), DDIM-50 and DPM-Solver++(2M)-20.

Prints a summary and writes OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.device import autocast_context, autocast_dtype, resolve_device
from core.diffusion import Diffusion, DiffusionConfig
from core.unet import UNet, count_parameters, get_preset

RESULTS: dict[str, dict] = {}


def section(name: str):
    """Run one section, record its figures (or its error) and go on."""
    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n== {name}", flush=True)
            start = time.perf_counter()
            try:
                RESULTS[name] = fn(*args, **kwargs) or {}
                RESULTS[name]["ok"] = True
            except Exception as exc:  # a report, not a test: say it and go on
                traceback.print_exc(limit=3)
                RESULTS[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                print(f"   FAILED: {RESULTS[name]['error']}", flush=True)
            RESULTS[name]["seconds"] = round(time.perf_counter() - start, 1)
        return run
    return wrap


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- 1. env


@section("env")
def env(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
            "amp_auto_training": str(autocast_dtype(device, "auto", training=True))}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gb=round(props.total_memory / 2**30, 1), gpus_visible=torch.cuda.device_count(),
                    cudnn=torch.backends.cudnn.version())
    for k, v in info.items():
        print(f"   {k}: {v}")
    return info


# ---------------------------------------------------------------------------- 2. oracle


class GaussianOracle(nn.Module):
    """The exact E[eps | x_t] for data x0 ~ N(mu, s^2) (per pixel) under ``diffusion``."""

    def __init__(self, diffusion: Diffusion, mu: float, s: float, size: int) -> None:
        super().__init__()
        self.diffusion, self.mu, self.s = diffusion, mu, s
        self.config = get_preset("tiny", image_size=size)  # generate() reads sizes from .config

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        ab = self.diffusion.alpha_bars[t].view(-1, 1, 1, 1).to(torch.float64)
        xd = x.to(torch.float64)
        eps = (1 - ab).sqrt() * (xd - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)
        return eps.to(x.dtype)


@section("oracle")
def oracle(device: torch.device, quick: bool) -> dict:
    from core.sampling import SampleRequest, generate_images

    mu, s, size = 0.3, 0.5, 16
    diffusion = Diffusion(DiffusionConfig(T=1000, schedule="cosine")).to(device)
    model = GaussianOracle(diffusion, mu, s, size).to(device)
    out = {}
    for sampler, steps in (("ddim", 50), ("dpmpp2m", 20), ("heun", 20)):
        request = SampleRequest(n=64 if quick else 256, sampler=sampler, steps=steps, seed=0, weights="raw",
                                amp="off", clip_x0=False, batch_size=256)
        images, _ = generate_images((model, diffusion), request, device=device)
        x = images.to(torch.float64) / 127.5 - 1  # uint8 quantisation: ~0.004 of the range
        mean, std = float(x.mean()), float(x.std())
        ok = abs(mean - mu) < 0.02 and abs(std - s) / s < 0.03
        out[sampler] = {"mean": round(mean, 4), "std": round(std, 4), "pass": ok}
        print(f"   {sampler}-{steps}: mean {mean:.4f} (data {mu}), std {std:.4f} (data {s}) "
              f"{'PASS' if ok else 'FAIL'}", flush=True)
    return out


# ---------------------------------------------------------------------------- 3. the CLI loop


def cli(ws: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ddpm_tui", "--workspace", str(ws), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} exited {done.returncode}: {(done.stderr or done.stdout)[-400:]}")
    return done


def digest(run_dir: Path) -> str:
    from core.checkpoint import load_checkpoint
    from core.train import weights_digest

    return weights_digest(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])


@section("loop")
def loop(device: torch.device, ws: Path, quick: bool) -> dict:
    cli(ws, "data", "demo", "--per-class", "40")
    data = ws / "data" / "demo"
    n = 10 if quick else 40
    common = ["--data", str(data), "--preset", "res-tiny", "--image-size", "32", "--device", str(device),
              "--log-every", "5", "--save_frequency", "1000", "--quiet"]
    cli(ws, "train", "--run", "straight", "--max-steps", str(2 * n), *common)
    cli(ws, "train", "--run", "resumed", "--max-steps", str(n), *common)
    cli(ws, "train", "--run", "resumed", "--max-steps", str(2 * n), "--quiet")
    a, b = digest(ws / "runs" / "straight"), digest(ws / "runs" / "resumed")
    print(f"   {n}+{n} steps vs {2 * n} straight: {'bit-exact' if a == b else 'DIFFERENT'} ({a[:12]} / {b[:12]})")
    t0 = time.perf_counter()
    done = cli(ws, "sample", "straight", "--n", "8", "--sampler", "dpmpp2m", "--steps", "20", "--device", str(device))
    print(f"   sample: {done.stdout.strip().splitlines()[-1]} ({time.perf_counter() - t0:.1f} s with start-up)")
    return {"resume_bit_exact": a == b}


# ---------------------------------------------------------------------------- 4. torchrun


@section("nccl")
def nccl(device: torch.device, ws: Path) -> dict:
    data = ws / "data" / "demo"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "ddpm_tui",
           "--workspace", str(ws), "train", "--run-name", "ddp1", "--data", str(data), "--preset", "res-tiny",
           "--image-size", "32", "--max-steps", "10", "--device", "cuda" if device.type == "cuda" else "cpu",
           "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    status = json.loads((ws / "runs" / "ddp1" / "status.json").read_text()) if done.returncode == 0 else {}
    print(f"   torchrun exit {done.returncode}, state {status.get('state')}, step {status.get('step')}")
    if done.returncode != 0:
        raise RuntimeError((done.stderr or done.stdout)[-400:])
    return {"state": status.get("state"), "step": status.get("step")}


# ---------------------------------------------------------------------------- 5. speed


def bare_step(model: nn.Module, x: torch.Tensor, amp, device: torch.device):
    """One training step of ``model`` on fixed data: forward, MSE, backward, fused Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    t = torch.randint(0, 1000, (x.shape[0],), device=device)
    noise = torch.randn_like(x)

    def step() -> None:
        with autocast_context(device, amp):
            pred = model(x, t)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def images_per_s(step, batch: int, device: torch.device, steps: int) -> float:
    step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def step_flops(model: nn.Module, x: torch.Tensor, amp, device: torch.device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    t = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    with counter, autocast_context(device, amp):
        model(x, t).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def trainer_images_per_s(ws: Path, device: torch.device, preset: str, batch: int, steps: int) -> float:
    data = ws / "data" / "demo"
    cli(ws, "train", "--run", "seedspeed", "--data", str(data), "--preset", preset, "--image-size", "64",
        "--batch_size", str(batch), "--max-steps", str(steps), "--log-every", "5", "--save_frequency", "1000",
        "--samples", "0", "--device", str(device), "--quiet", timeout=900)
    rates = [r["images_per_s"] for r in map(json.loads, (ws / "runs" / "seedspeed" / "metrics.jsonl").read_text().splitlines())
             if r.get("images_per_s")]
    return statistics.median(rates[1:] or rates)  # the first window holds the warm-up


@section("speed")
def speed(device: torch.device, ws: Path, batch: int, peak_tflops: float, quick: bool) -> dict:
    amp = autocast_dtype(device, "auto", training=True)
    preset = "tiny" if quick else "seed"  # --quick checks the path, not the figures
    torch.manual_seed(0)
    model = UNet(get_preset(preset, image_size=64)).to(device)
    x = torch.randn(batch, 3, 64, 64, device=device)
    flops = step_flops(model, x, amp, device)
    steps = 3 if quick else 20
    out = {"preset": preset, "batch": batch, "amp": str(amp), "parameters": count_parameters(model), "gflop_per_step": round(flops / 1e9, 1)}
    for layout in ("nchw", "channels_last"):
        m, xx = model, x
        if layout == "channels_last":
            m, xx = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        ips = images_per_s(bare_step(m, xx, amp, device), batch, device, steps)
        mfu = ips / batch * flops / (peak_tflops * 1e12)
        out[f"bare_{layout}_images_per_s"], out[f"bare_{layout}_mfu"] = round(ips, 1), round(mfu, 4)
        print(f"   bare step {layout}: {ips:.1f} img/s, MFU {100 * mfu:.1f} % of {peak_tflops:g} TFLOP/s", flush=True)
    model = model.to(memory_format=torch.contiguous_format)
    if not quick:
        compiled = torch.compile(model)
        step = bare_step(compiled, x, amp, device)
        t0 = time.perf_counter()
        step()
        sync(device)
        out["compile_first_step_s"] = round(time.perf_counter() - t0, 1)
        out["compiled_images_per_s"] = round(images_per_s(step, batch, device, steps), 1)
        print(f"   torch.compile: first step {out['compile_first_step_s']} s, then "
              f"{out['compiled_images_per_s']} img/s", flush=True)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    trainer = trainer_images_per_s(ws, device, preset, batch, 10 if quick else 60)
    best_bare = max(out["bare_nchw_images_per_s"], out["bare_channels_last_images_per_s"])
    out["trainer_images_per_s"], out["trainer_vs_bare"] = round(trainer, 1), round(trainer / best_bare, 3)
    print(f"   trainer (metrics.jsonl, median): {trainer:.1f} img/s = {trainer / best_bare:.2f}x the bare step")
    return out


# ---------------------------------------------------------------------------- 6. sampling


@section("sampling")
def sampling(device: torch.device, quick: bool) -> dict:
    from core.sampling import SampleRequest, generate_images

    torch.manual_seed(0)
    model = UNet(get_preset("tiny" if quick else "seed", image_size=64)).to(device).eval()
    diffusion = Diffusion(DiffusionConfig(T=1000)).to(device)
    out = {}
    for sampler, steps in (("ddim", 50), ("dpmpp2m", 20)):
        request = SampleRequest(n=10, sampler=sampler, steps=2 if quick else steps, seed=0, weights="raw")
        generate_images((model, diffusion), SampleRequest(n=10, steps=1, weights="raw"), device=device)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        generate_images((model, diffusion), request, device=device)
        sync(device)
        out[f"{sampler}{request.steps}_s"] = round(time.perf_counter() - t0, 3)
        print(f"   10 images, {sampler}-{request.steps}: {out[f'{sampler}{request.steps}_s']} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check the script")
    p.add_argument("--batch", type=int, default=128, help="seed-preset batch for the speed section (default 128)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the device's dense bf16 peak for MFU (default 989: H100/H200 SXM)")
    p.add_argument("--quick", action="store_true", help="tiny step counts (checks the script, not the GPU)")
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json and the workspace")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    ws = out / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    start = time.perf_counter()
    env(device)
    oracle(device, args.quick)
    loop(device, ws, args.quick)
    nccl(device, ws)
    speed(device, ws, 16 if args.quick else args.batch, args.peak_tflops, args.quick)
    sampling(device, args.quick)
    total = time.perf_counter() - start
    print(f"\n== summary ({total:.0f} s)")
    for name, res in RESULTS.items():
        print(f"   {name:<9} {'ok' if res.get('ok') else 'FAILED: ' + res.get('error', '')}  ({res['seconds']} s)")
    (out / "gpu_check.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "total_s": round(total, 1),
                                                    "results": RESULTS}, indent=2, default=str))
    print(f"   details: {out / 'gpu_check.json'}")
    return 0 if all(r.get("ok") for r in RESULTS.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
