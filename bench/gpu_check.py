"""What to run first on a GPU machine: one prepared script, about 5 minutes on one GPU.

    python -m bench.gpu_check [--device cuda] [--batch 128] [--peak-tflops 989] [--out DIR]
    python -m bench.gpu_check --device cpu --quick        # the same path on a CPU, in a minute

Sections (each prints its figures; a failing section says why and the others still run):
1. env: torch, CUDA, the GPU, compute capability, memory, what `--amp auto` picks there.
2. oracle: the Gaussian oracle on the device (for N(mu, s^2) data the ideal noise predictor
   is closed form; DDIM-50, DPM-Solver++(2M)-20 and Heun-20 driven by it must give the
   moments of the data as uint8 images hold it: clipped to [-1, 1]) — the samplers' math on
   this device's kernels.
3. tests: the core tests that take a GPU (exact resume on CUDA with --deterministic).
4. loop: the CLI as a user runs it: `data demo`, `train` 2N steps straight, N + N steps with a
   stop between (--deterministic on CUDA), weights digests compared (bit-exact resume, or
   not), then `sample` with DPM-Solver++ 20 steps.
5. nccl: `torchrun --nproc_per_node 1 -m ddpm_tui train ...` (NCCL on CUDA, gloo on a CPU).
6. speed: the classic preset's (--quick: tiny's) bare training step (model, MSE, fused Adam; bf16
   autocast where chosen; no data, no EMA, no logging) at --batch, NCHW and channels_last,
   timed like the trainer times itself (windows of steps, one device sync per window, after
   a warm-up, cuDNN autotuning on), with FLOPs and MFU against --peak-tflops; the real
   trainer on the same network, batch and optimiser (`--recipe classic`; metrics.jsonl, median
   after the first window) and its ratio to the bare step measured just before and after it;
   `--compile`: the first (compiling) step in a fresh process with an empty compile cache
   (cold) and again with that cache (warm), and compiled images/s.
7. sampling: 10 classic-preset images (random weights), DDIM-50 and DPM-Solver++(2M)-20.

Prints a summary and writes OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from core.diffusion.device import autocast_context, autocast_dtype, resolve_device
from core.diffusion.process import Diffusion, DiffusionConfig
from core.diffusion.unet import UNet, count_parameters, get_preset

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


def clipped_normal_moments(mu: float, s: float, low: float = -1.0, high: float = 1.0) -> tuple[float, float]:
    """Mean and standard deviation of clip(X, low, high) for X ~ N(mu, s^2): what uint8
    images of such data hold (the tails beyond [-1, 1] pile up at the ends)."""
    from math import erf, exp, pi, sqrt

    cdf = lambda z: 0.5 * (1 + erf(z / sqrt(2)))  # noqa: E731
    pdf = lambda z: exp(-z * z / 2) / sqrt(2 * pi)  # noqa: E731
    a, b = (low - mu) / s, (high - mu) / s
    inside = cdf(b) - cdf(a)
    mean = low * cdf(a) + high * (1 - cdf(b)) + mu * inside + s * (pdf(a) - pdf(b))
    second = (low**2 * cdf(a) + high**2 * (1 - cdf(b)) + (mu**2 + s**2) * inside
              + 2 * mu * s * (pdf(a) - pdf(b)) + s**2 * (a * pdf(a) - b * pdf(b)))
    return mean, sqrt(second - mean**2)


@section("oracle")
def oracle(device: torch.device, quick: bool) -> dict:
    from core.diffusion.sampling import SampleRequest, generate_images

    mu, s, size = 0.3, 0.5, 16
    want_mean, want_std = clipped_normal_moments(mu, s)  # 0.2825, 0.4632: 8.5 % of the data lies beyond +-1
    diffusion = Diffusion(DiffusionConfig(T=1000, schedule="cosine")).to(device)
    model = GaussianOracle(diffusion, mu, s, size).to(device)
    out, failed = {}, []
    for sampler, steps in (("ddim", 50), ("dpmpp2m", 20), ("heun", 20)):
        request = SampleRequest(n=64 if quick else 256, sampler=sampler, steps=steps, seed=0, weights="raw",
                                amp="off", clip_x0=False, batch_size=256)
        images, _ = generate_images((model, diffusion), request, device=device)
        x = images.to(torch.float64) / 127.5 - 1  # uint8 quantisation: ~0.004 of the range
        mean, std = float(x.mean()), float(x.std())
        ok = abs(mean - want_mean) < 0.02 and abs(std - want_std) / want_std < 0.03
        out[sampler] = {"mean": round(mean, 4), "std": round(std, 4), "pass": ok}
        if not ok:
            failed.append(sampler)
        print(f"   {sampler}-{steps}: mean {mean:.4f} (data {want_mean:.4f}), std {std:.4f} (data {want_std:.4f}) "
              f"{'PASS' if ok else 'FAIL'}", flush=True)
    if failed:
        raise AssertionError(f"samplers off the data's moments: {', '.join(failed)}")
    return out


# ---------------------------------------------------------------------------- 3. tests on the GPU


@section("tests")
def gpu_tests(device: torch.device) -> dict:
    """The core tests with a CUDA case (skipped where there is no GPU)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           "tests/core/test_train.py::test_resume_is_exact", "tests/core/test_device.py"]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    tail = (done.stdout.strip().splitlines() or [""])[-1]
    print(f"   {' '.join(cmd[3:])}: {tail}")
    if done.returncode != 0:
        raise RuntimeError((done.stdout + done.stderr)[-600:])
    return {"summary": tail}


# ---------------------------------------------------------------------------- 4. the CLI loop


def cli(ws: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ddpm_tui", "--workspace", str(ws), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} exited {done.returncode}: {(done.stderr or done.stdout)[-400:]}")
    return done


def digest(run_dir: Path) -> str:
    from core.diffusion.checkpoint import load_checkpoint
    from core.training.train import weights_digest

    return weights_digest(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])


@section("loop")
def loop(device: torch.device, ws: Path, quick: bool) -> dict:
    data = ws / "data" / "demo"
    n = 10 if quick else 40
    # Bit-exact on a CPU as it is; on CUDA with --deterministic (the README's promise).
    deterministic = ["--deterministic"] if device.type == "cuda" else []
    common = ["--data", str(data), "--preset", "res-tiny", "--image-size", "32", "--device", str(device),
              "--log-every", "5", "--save_frequency", "1000", "--quiet", *deterministic]
    cli(ws, "train", "--run", "straight", "--max-steps", str(2 * n), *common)
    cli(ws, "train", "--run", "resumed", "--max-steps", str(n), *common)
    cli(ws, "train", "--run", "resumed", "--max-steps", str(2 * n), "--quiet")
    a, b = digest(ws / "runs" / "straight"), digest(ws / "runs" / "resumed")
    print(f"   {n}+{n} steps vs {2 * n} straight{' (--deterministic)' if deterministic else ''}: "
          f"{'bit-exact' if a == b else 'DIFFERENT'} ({a[:12]} / {b[:12]})")
    data_line = next((line.split("INFO", 1)[-1].strip() for line in
                      (ws / "runs" / "straight" / "train.log").read_text().splitlines() if " data: " in line), "")
    print(f"   trainer's {data_line}")
    t0 = time.perf_counter()
    done = cli(ws, "sample", "straight", "--n", "8", "--sampler", "dpmpp2m", "--steps", "20", "--device", str(device))
    print(f"   sample: {done.stdout.strip().splitlines()[-1]} ({time.perf_counter() - t0:.1f} s with start-up)")
    if a != b:
        raise AssertionError(f"resume is not bit-exact on {device}{' with --deterministic' if deterministic else ''}")
    return {"resume_bit_exact": True, "deterministic": bool(deterministic), "data": data_line}


# ---------------------------------------------------------------------------- 5. torchrun


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


# ---------------------------------------------------------------------------- 6. speed


def bare_step(model: nn.Module, x: torch.Tensor, amp, device: torch.device):
    """One training step of ``model`` on fixed data: forward, MSE, backward, fused Adam
    (the trainer's optimiser under --recipe classic), nothing else."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu", "mps"))
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


def images_per_s(step, batch: int, device: torch.device, windows: int, per_window: int, warmup: int) -> float:
    """Images/s the way the trainer measures itself: ``warmup`` steps first (first-call
    set-up, cuDNN's autotuning), then windows of ``per_window`` steps with one device sync
    at the end of each (the trainer syncs once per metrics line, not per step); the median
    window. A sync per step would leave the device idle while the host launches the next
    step's kernels, and one step after one warm-up step caught first-call costs."""
    for _ in range(warmup):
        step()
    sync(device)
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(per_window):
            step()
        sync(device)
        rates.append(batch * per_window / (time.perf_counter() - t0))
    return statistics.median(rates)


def step_flops(model: nn.Module, x: torch.Tensor, amp, device: torch.device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    t = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    with counter, autocast_context(device, amp):
        model(x, t).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def trainer_images_per_s(ws: Path, device: torch.device, preset: str, batch: int, steps: int,
                         log_every: int) -> tuple[float, list[str]]:
    """The real trainer on the bare step's network, batch and optimiser (--recipe classic:
    Adam, no clipping; --no-flip changes nothing of the cost), median of its metrics lines
    after the first (which holds the warm-up). Returns the figure and the command."""
    data = ws / "data" / "demo"
    args = ["train", "--run", "trainerspeed", "--recipe", "classic", "--data", str(data), "--preset", preset,
            "--image-size", "64", "--batch_size", str(batch), "--max-steps", str(steps), "--log-every",
            str(log_every), "--save_frequency", "1000", "--samples", "0", "--device", str(device), "--quiet"]
    cli(ws, *args, timeout=900)
    rates = [r["images_per_s"] for r in map(json.loads, (ws / "runs" / "trainerspeed" / "metrics.jsonl").read_text().splitlines())
             if r.get("images_per_s")]
    return statistics.median(rates[1:] or rates), args


def compile_probe(device: torch.device, preset: str, batch: int, windows: int, per_window: int) -> dict:
    """Run in a fresh process (--compile-probe): the bare step compiled the way the trainer
    compiles (core.training.train.compile_network), its first step timed, then images/s."""
    from core.diffusion.device import kernel_choices
    from core.training.train import compile_network

    amp = autocast_dtype(device, "auto", training=True)
    torch.manual_seed(0)
    model = UNet(get_preset(preset, image_size=64)).to(device)
    x = torch.randn(batch, 3, 64, 64, device=device)
    with kernel_choices(False):
        step = bare_step(compile_network(model), x, amp, device)
        t0 = time.perf_counter()
        step()
        sync(device)
        first = time.perf_counter() - t0
        ips = images_per_s(step, batch, device, windows, per_window, warmup=2)
    return {"first_step_s": round(first, 1), "images_per_s": round(ips, 1)}


def run_compile_probe(device: torch.device, preset: str, batch: int, cache: Path, windows: int,
                      per_window: int) -> dict:
    cmd = [sys.executable, "-m", "bench.gpu_check", "--compile-probe", "--device", str(device), "--preset", preset,
           "--batch", str(batch), "--windows", str(windows), "--per-window", str(per_window)]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=root,
                          env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(root)})
    if done.returncode != 0:
        raise RuntimeError(f"compile probe exited {done.returncode}: {(done.stderr or done.stdout)[-400:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@section("speed")
def speed(device: torch.device, ws: Path, batch: int, peak_tflops: float, quick: bool, out_dir: Path) -> dict:
    from core.diffusion.device import kernel_choices

    amp = autocast_dtype(device, "auto", training=True)
    preset = "tiny" if quick else "classic"  # --quick checks the path, not the figures
    windows, per_window, warmup = (3, 3, 3) if quick else (5, 10, 10)
    torch.manual_seed(0)
    model = UNet(get_preset(preset, image_size=64)).to(device)
    x = torch.randn(batch, 3, 64, 64, device=device)
    flops = step_flops(model, x, amp, device)
    out = {"preset": preset, "batch": batch, "amp": str(amp), "parameters": count_parameters(model),
           "gflop_per_step": round(flops / 1e9, 1)}

    def bare(tag: str) -> float:
        """Both layouts; returns NCHW's images/s (the trainer's default layout)."""
        nchw = 0.0
        for layout in ("nchw", "channels_last"):
            cl = layout == "channels_last"
            m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            xx = x.contiguous(memory_format=torch.channels_last) if cl else x
            with kernel_choices(False):  # cuDNN autotuning, as in the trainer
                ips = images_per_s(bare_step(m, xx, amp, device), batch, device, windows, per_window, warmup)
            mfu = ips / batch * flops / (peak_tflops * 1e12)
            out[f"bare_{layout}_{tag}_images_per_s"], out[f"bare_{layout}_{tag}_mfu"] = round(ips, 1), round(mfu, 4)
            print(f"   bare step {layout} ({tag}): {ips:.1f} img/s, MFU {100 * mfu:.1f} % of {peak_tflops:g} TFLOP/s",
                  flush=True)
            nchw = ips if layout == "nchw" else nchw
        model.to(memory_format=torch.contiguous_format)
        return nchw

    before = bare("before")
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the trainer runs in its own process beside this one
    steps, log_every = (20, 5) if quick else (80, 10)
    trainer, args = trainer_images_per_s(ws, device, preset, batch, steps, log_every)
    after = bare("after")
    ref = (before + after) / 2
    out.update(trainer_images_per_s=round(trainer, 1), trainer_vs_bare=round(trainer / ref, 3),
               trainer_command="ddpm-tui " + " ".join(args))
    print(f"   trainer `{out['trainer_command']}`: {trainer:.1f} img/s (metrics.jsonl, median) "
          f"= {trainer / ref:.2f}x the bare NCHW step ({before:.1f} before, {after:.1f} after)")
    if abs(before - after) > 0.2 * ref:
        print("   the bare step moved by over 20 % between the two measurements: other load on this machine; "
              "the ratio is unreliable", flush=True)
    if not quick or device.type != "cpu":
        # Cold: a fresh process and an empty compile cache; warm: a fresh process, that cache.
        cache = out_dir / "inductor-cache"
        shutil.rmtree(cache, ignore_errors=True)
        cold = run_compile_probe(device, preset, batch, cache, windows, per_window)
        warm = run_compile_probe(device, preset, batch, cache, windows, per_window)
        out.update(compile_cold_first_step_s=cold["first_step_s"], compile_warm_first_step_s=warm["first_step_s"],
                   compiled_images_per_s=warm["images_per_s"])
        print(f"   --compile first step: {cold['first_step_s']} s cold (empty cache), {warm['first_step_s']} s warm "
              f"(cached); then {warm['images_per_s']} img/s = {warm['images_per_s'] / ref:.2f}x the bare step",
              flush=True)
    return out


# ---------------------------------------------------------------------------- 7. sampling


@section("sampling")
def sampling(device: torch.device, quick: bool) -> dict:
    from core.diffusion.sampling import SampleRequest, generate_images

    torch.manual_seed(0)
    model = UNet(get_preset("tiny" if quick else "classic", image_size=64)).to(device).eval()
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


SECTIONS = ("env", "oracle", "tests", "loop", "nccl", "speed", "sampling")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check the script")
    p.add_argument("--batch", type=int, default=128, help="classic-preset batch for the speed section (default 128)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the device's dense bf16 peak for MFU (default 989: H100/H200 SXM)")
    p.add_argument("--quick", action="store_true", help="tiny step counts (checks the script, not the GPU)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None, metavar="SECTION",
                   help=f"run only these sections ({', '.join(SECTIONS)}; env always runs)")
    p.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json and the workspace")
    # The speed section's compile probe, run in a fresh process (cold / warm compile cache).
    p.add_argument("--compile-probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="classic", help=argparse.SUPPRESS)
    p.add_argument("--windows", type=int, default=5, help=argparse.SUPPRESS)
    p.add_argument("--per-window", type=int, default=10, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    if args.compile_probe:
        print(json.dumps(compile_probe(device, args.preset, args.batch, args.windows, args.per_window)))
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    ws = out / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    wanted = set(args.only or SECTIONS)
    start = time.perf_counter()
    env(device)
    if "oracle" in wanted:
        oracle(device, args.quick)
    if "tests" in wanted:
        gpu_tests(device)
    if wanted & {"loop", "nccl", "speed"} and not (ws / "data" / "demo").is_dir():
        cli(ws, "data", "demo", "--per-class", "40")
    if "loop" in wanted:
        loop(device, ws, args.quick)
    if "nccl" in wanted:
        nccl(device, ws)
    if "speed" in wanted:
        speed(device, ws, 16 if args.quick else args.batch, args.peak_tflops, args.quick, out)
    if "sampling" in wanted:
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
