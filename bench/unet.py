"""Training-step speed of the UNet: ours against the original's computational choices, same run.

    python -m bench.unet [--preset classic] [--batch 16] [--size 64] [--steps 3] [--profile]
    python -m bench.unet --compare small,res-small,res-tiny,peer [--batch 32] [--size 32] [--steps 5]
    python -m bench.unet --ab upsample|layout [--preset classic] [--batch 2] [--device cpu|cuda]
    python -m bench.unet --compile-time [--preset tiny] [--size 16] [--batch 4]

One step = forward + MSE loss + backward + Adam step.
- baseline: the original's choices: fp32, contiguous NCHW, ``nn.MultiheadAttention`` returning
  its attention weights, the time embedding ``repeat``-ed (bench/original_baseline.py), plain Adam;
- ours: ``core.diffusion.unet.UNet`` under bf16 autocast (when the device has fast bf16, or --dtype
  bf16), channels_last, SDPA attention, broadcast embedding, fused Adam.
Both start from the same weights; steps are interleaved so machine noise hits both alike.
Also printed: the step's FLOPs (torch.utils.flop_counter) and the fraction of a bf16 matmul
peak (a large bf16 matmul timed in the same run) that ours achieves.

``--ab upsample``: the classic design's bilinear x2 up-sampling as F.interpolate ("native")
against the separable-matmul form ("matmul", core.diffusion.unet.upsample_bilinear2x), same model,
same optimizer, interleaved steps; ``--ab upsample-op``: the up-sampling alone at the shapes the preset's Up
blocks see; ``--ab layout``: NCHW against channels_last (two copies
of the same weights). Both print wall and process-CPU medians and their ratios: the figures
behind core.diffusion.unet's UPSAMPLE_IMPL and the trainer's channels_last default. ``--compile-time``: first-step (compile)
time and then step time of ``torch.compile(model)`` against ``core.diffusion.unet.compile_model``
(regional), each in a fresh process with an empty Inductor cache, next to eager.
``--device cuda`` runs any of these on a GPU (timed after a synchronize).

``--compare``: images/s of a training step of several networks, all run our way (autocast,
channels_last, fused Adam), interleaved, medians, ratios against the first one. Names are
presets, or ``peer`` / ``peer-fp32``: denoising-diffusion-pytorch's ``Unet(dim=32,
dim_mults=(1, 2, 4))`` under the same autocast / in fp32 (needs the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import fmt_seconds, median, time_repeats
from bench.original_baseline import to_original_style
from core.diffusion.device import autocast_context, autocast_dtype
from core.diffusion.unet import (
    PRESETS,
    BilinearUpsample2x,
    UNet,
    compile_model,
    count_parameters,
    get_preset,
    upsample_bilinear2x,
    upsample_impl,
)
from core.diffusion.registry import current_name
from core.training.options import BY_NAME

TRAINER_CHANNELS_LAST = BY_NAME["channels_last"].default  # the layout a run trains in unless told


def make_step(model, *, x, t, noise, dtype, channels_last: bool, fused_adam: bool, before=None):
    """A closure running one training step of ``model`` on fixed inputs (on their device).

    ``before``: called at the start of every step (e.g. to switch an implementation).
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        noise = noise.contiguous(memory_format=torch.channels_last)
    kwargs = {"fused": True} if fused_adam else {}
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, **kwargs)

    def step() -> float:
        if before is not None:
            before()
        with autocast_context(x.device, dtype):
            pred = model(x, t)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()  # also a sync point (on a GPU too)

    return step


def count_step_flops(model, x, t, noise, dtype) -> int:
    """FLOPs of forward + backward (the optimizer's elementwise work is not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast_context("cpu", dtype):
            pred = model(x, t)
        F.mse_loss(pred.float(), noise).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype``: the practical peak of this machine."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    times = time_repeats(lambda: torch.mm(a, b), repeats=repeats, warmup=2)
    return 2 * n**3 / median(times)


def profile_step(step, rows: int = 15) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


PEERS = ("peer", "peer-fp32")


def build_network(name: str, size: int):
    """(model, description) of a preset or of the peer network."""
    if name in PEERS:
        try:
            from denoising_diffusion_pytorch import Unet
        except ImportError:
            raise SystemExit("the peer needs the bench extra: pip install -e '.[bench]'") from None

        class Peer(torch.nn.Module):  # our call signature: (x, t) -> prediction
            def __init__(self):
                super().__init__()
                self.net = Unet(dim=32, dim_mults=(1, 2, 4))

            def forward(self, x, t):
                return self.net(x, t)

        return Peer(), "denoising-diffusion-pytorch Unet(dim=32, dim_mults=(1, 2, 4))"
    config = get_preset(name, image_size=size)
    return UNet(config), f"preset {name} ({config.block} design)"


def compare(names: list[str], *, batch: int, size: int, steps: int, warmup: int, dtype, channels_last: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    noise = torch.randn(x.shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    runs = {}
    print(f"training step, batch {batch}, {size}x{size}, autocast {dtype or 'off'} (peer-fp32: off), "
          f"{'channels_last' if channels_last else 'NCHW'}, fused Adam, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in names:
        torch.manual_seed(0)
        model, what = build_network(name, size)
        step_dtype = None if name == "peer-fp32" else dtype
        runs[name] = make_step(model, x=x, t=t, noise=noise, dtype=step_dtype, channels_last=channels_last, fused_adam=True)
        time_repeats(runs[name], repeats=0, warmup=warmup)
        print(f"  {name:>10}: {what}, {count_parameters(model):,} parameters")
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(steps):  # interleaved: noise from other processes hits all alike
        for name, fn in runs.items():
            times[name] += time_repeats(fn, repeats=1, warmup=0)
    ref = median(times[names[0]])
    print(f"{'network':>12} {'step (median)':>14} {'images/s':>9} {'vs ' + names[0]:>12}")
    for name in names:
        med = median(times[name])
        print(f"{name:>12} {fmt_seconds(med):>14} {batch / med:9.1f} {ref / med:11.2f}x")


def _inputs(config, batch: int, size: int, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, config.in_channels, size, size, generator=g)
    noise = torch.randn(x.shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x.to(device), t.to(device), noise.to(device)


def _timed(fns: dict, steps: int) -> tuple[dict, dict]:
    """Interleaved steps of each closure: wall and process-CPU seconds per step."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(steps):  # interleaved: noise from other processes hits all alike
        for name, fn in fns.items():
            start = time.process_time()
            wall[name] += time_repeats(fn, repeats=1, warmup=0)
            cpu[name].append(time.process_time() - start)
    return wall, cpu


def ab(kind: str, *, preset: str, batch: int, size: int | None, steps: int, warmup: int, dtype, device,
       layout: str | None) -> None:
    """Two ways of running the same training step, interleaved: medians and the ratio."""
    config = get_preset(preset, **({"image_size": size} if size else {}))
    size = config.image_size
    x, t, noise = _inputs(config, batch, size, device)
    torch.manual_seed(0)
    model = UNet(config).to(device)
    channels_last = TRAINER_CHANNELS_LAST if layout is None else layout == "channels_last"
    if kind == "upsample":
        ups = [m for m in model.modules() if isinstance(m, BilinearUpsample2x)]
        if not ups:
            raise SystemExit(f"preset {preset} has no bilinear up-sampling (the resnet design up-samples by nearest + conv)")

        def use(impl):
            def set_impl():
                for m in ups:
                    m.impl = impl
            return set_impl

        # One model (two optimizers over it): the variants differ only in the up-sampling.
        names = ("native", "matmul")
        fns = {impl: make_step(model, x=x, t=t, noise=noise, dtype=dtype, channels_last=channels_last,
                               fused_adam=True, before=use(impl)) for impl in names}
        what = f"layout {'channels_last' if channels_last else 'NCHW'}; device default: {upsample_impl(device)}"
    elif kind == "layout":
        names = ("nchw", "channels_last")
        other = UNet(config).to(device)
        other.load_state_dict(model.state_dict())
        fns = {
            "nchw": make_step(model, x=x, t=t, noise=noise, dtype=dtype, channels_last=False, fused_adam=True),
            "channels_last": make_step(other, x=x, t=t, noise=noise, dtype=dtype, channels_last=True, fused_adam=True),
        }
        what = f"up-sampling {upsample_impl(device)}; trainer default: {'channels_last' if TRAINER_CHANNELS_LAST else 'NCHW'}"
    else:
        raise SystemExit(f"unknown --ab {kind!r}")
    print(f"--ab {kind}: preset {preset} ({count_parameters(model):,} parameters), batch {batch}, {size}x{size}, "
          f"{device}, autocast {dtype or 'off (fp32)'}, fused Adam, {what}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for fn in fns.values():
        time_repeats(fn, repeats=0, warmup=warmup)
    wall, cpu = _timed(fns, steps)
    a, b = names
    fmt_all = lambda ts: ", ".join(fmt_seconds(s) for s in ts)  # noqa: E731
    for name in names:
        print(f"  {name:>13}: wall median {fmt_seconds(median(wall[name]))} ({fmt_all(wall[name])}); "
              f"process CPU median {fmt_seconds(median(cpu[name]))}")
    print(f"  {b} / {a}: wall {median(wall[b]) / median(wall[a]):.2f}x, process CPU "
          f"{median(cpu[b]) / median(cpu[a]):.2f}x  (< 1: {b} is faster)")


def ab_upsample_op(*, preset: str, batch: int, size: int | None, steps: int, device, layout: str | None) -> None:
    """The up-sampling alone, forward + backward, at the shapes the preset's Up blocks see."""
    config = get_preset(preset, **({"image_size": size} if size else {}))
    model = UNet(config).to(device)
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
             for m in model.modules() if isinstance(m, BilinearUpsample2x)]
    if not hooks:
        raise SystemExit(f"preset {preset} has no bilinear up-sampling (the resnet design up-samples by nearest + conv)")
    x, t, _ = _inputs(config, batch, config.image_size, device)
    with torch.no_grad():
        model(x, t)
    channels_last = TRAINER_CHANNELS_LAST if layout is None else layout == "channels_last"
    print(f"--ab upsample-op: preset {preset}, batch {batch}, {config.image_size}x{config.image_size}, {device}, fp32, "
          f"{'channels_last' if channels_last else 'NCHW'}, forward + backward of each Up block's up-sampling, "
          f"{steps} interleaved repeats, torch {torch.__version__}, {torch.get_num_threads()} threads")
    totals = {"native": [0.0, 0.0], "matmul": [0.0, 0.0]}
    g = torch.Generator().manual_seed(0)
    for shape in shapes:
        inp = torch.randn(shape, generator=g).to(device)
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        inp.requires_grad_(True)
        grad = torch.randn(shape[0], shape[1], 2 * shape[2], 2 * shape[3], generator=g).to(device)

        def run(impl):
            def fn():
                upsample_bilinear2x(inp, impl).backward(grad)
                inp.grad = None
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            return fn

        fns = {impl: run(impl) for impl in totals}
        for fn in fns.values():
            fn()
        wall, cpu = _timed(fns, steps)
        cells = []
        for impl in totals:
            totals[impl][0] += median(wall[impl])
            totals[impl][1] += median(cpu[impl])
            cells.append(f"{impl} {fmt_seconds(median(wall[impl]))} (CPU {fmt_seconds(median(cpu[impl]))})")
        print(f"  {'x'.join(map(str, shape)):>16}: " + ", ".join(cells))
    (nw, nc), (mw, mc) = totals["native"], totals["matmul"]
    print(f"  all Up blocks: native {fmt_seconds(nw)} (CPU {fmt_seconds(nc)}), matmul {fmt_seconds(mw)} "
          f"(CPU {fmt_seconds(mc)}) -> matmul / native: wall {mw / nw:.2f}x, process CPU {mc / nc:.2f}x")


COMPILE_MODES = ("eager", "whole", "regional", "regional-dynamic")


def compile_child(mode: str, *, preset: str, batch: int, size: int, steps: int, dtype, device) -> dict:
    """One process's figures for --compile-time: first step (compile) time, then step median."""
    config = get_preset(preset, image_size=size)
    x, t, noise = _inputs(config, batch, size, device)
    torch.manual_seed(0)
    model = UNet(config).to(device)
    if mode == "whole":
        model = torch.compile(model)
    elif mode == "regional":
        model = compile_model(model)
    elif mode == "regional-dynamic":  # one dynamic-shape graph per block class from the start
        model = compile_model(model, dynamic=True)
    step = make_step(model, x=x, t=t, noise=noise, dtype=dtype,
                     channels_last=TRAINER_CHANNELS_LAST, fused_adam=True)
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    times = time_repeats(step, repeats=steps, warmup=1)
    out = {"mode": mode, "first_step_s": first, "step_s": median(times)}
    if mode != "eager":
        from torch._dynamo.utils import counters

        out["graphs"] = int(counters["stats"].get("unique_graphs", 0))
    return out


def compile_time(*, preset: str, batch: int, size: int, steps: int, dtype_arg: str, device_arg: str,
                 threads: int | None, timeout: float, modes: list[str]) -> None:
    print(f"compile time: preset {preset}, batch {batch}, {size}x{size}, {device_arg}, autocast {dtype_arg}; "
          f"each mode in a fresh process with an empty Inductor cache, torch {torch.__version__}")
    rows = []
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="bench-unet-inductor-") as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            cmd = [sys.executable, "-m", "bench.unet", "--compile-child", mode, "--preset", preset,
                   "--batch", str(batch), "--size", str(size), "--steps", str(steps), "--dtype", dtype_arg,
                   "--device", device_arg] + (["--threads", str(threads)] if threads else [])
            start = time.perf_counter()
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"  {mode:>8}: not measured, over {fmt_seconds(timeout)} (--compile-timeout)", flush=True)
                continue
            total = time.perf_counter() - start
        if proc.returncode:
            print(f"  {mode}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["process_s"] = total
        rows.append(row)
        graphs = f", {row['graphs']} graphs" if "graphs" in row else ""
        print(f"  {mode:>8}: first step {fmt_seconds(row['first_step_s'])}, then {fmt_seconds(row['step_s'])} a step "
              f"(median of {steps}){graphs}; whole process {fmt_seconds(total)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.unet", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="classic", type=current_name, choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=None, help="image size (default: the preset's)")
    p.add_argument("--steps", type=int, default=3, help="timed steps of each variant (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto", help="autocast for ours")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--profile", action="store_true", help="print the top ops of one step of each variant")
    p.add_argument("--layout", choices=("nchw", "channels_last"), default="nchw",
                   help="memory layout for --compare (default: nchw, the trainer's default)")
    p.add_argument("--compare", default="", metavar="NAMES",
                   help=f"comma-separated presets and/or {', '.join(PEERS)}: images/s of each, ratios to the first")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] for --ab and --compile-time (default: cpu)")
    p.add_argument("--ab", choices=("upsample", "upsample-op", "layout"), default=None,
                   help="time two ways of running the step: up-sampling native vs matmul (upsample-op: the "
                        "up-sampling alone), or NCHW vs channels_last")
    p.add_argument("--ab-layout", choices=("nchw", "channels_last"), default=None,
                   help="layout for --ab upsample (default: the trainer's, --channels_last off)")
    p.add_argument("--compile-time", action="store_true",
                   help="first-step time of torch.compile(model) vs compile_model(model) (regional), and eager")
    p.add_argument("--compile-timeout", type=float, default=600, help="seconds per --compile-time process")
    p.add_argument("--compile-modes", default="eager,whole,regional",
                   help=f"comma-separated, of {', '.join(COMPILE_MODES)} (default: eager,whole,regional)")
    p.add_argument("--compile-child", choices=COMPILE_MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--batch and --steps must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"--device {args.device!r} is not a device (cpu, cuda, cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here")
    if args.compile_child:
        size = args.size or get_preset(args.preset).image_size
        row = compile_child(args.compile_child, preset=args.preset, batch=args.batch, size=size, steps=args.steps,
                            dtype=autocast_dtype(device, args.dtype), device=device)
        print(json.dumps(row))
        return 0
    if args.compile_time:
        modes = [m.strip() for m in args.compile_modes.split(",") if m.strip()]
        bad = [m for m in modes if m not in COMPILE_MODES]
        if bad or not modes:
            p.error(f"--compile-modes: unknown {', '.join(bad) or '(none given)'}; known: {', '.join(COMPILE_MODES)}")
        compile_time(preset=args.preset, batch=args.batch, size=args.size or get_preset(args.preset).image_size,
                     steps=args.steps, dtype_arg=args.dtype, device_arg=args.device, threads=args.threads,
                     timeout=args.compile_timeout, modes=modes)
        return 0
    if args.ab == "upsample-op":
        ab_upsample_op(preset=args.preset, batch=args.batch, size=args.size, steps=args.steps, device=device,
                       layout=args.ab_layout)
        return 0
    if args.ab:
        ab(args.ab, preset=args.preset, batch=args.batch, size=args.size, steps=args.steps, warmup=args.warmup,
           dtype=autocast_dtype(device, args.dtype), device=device, layout=args.ab_layout)
        return 0
    if args.compare:
        names = [n.strip() for n in args.compare.split(",") if n.strip()]
        unknown = [n for n in names if n not in PRESETS and n not in PEERS]
        if unknown:
            p.error(f"unknown network(s) {', '.join(unknown)}; known: {', '.join([*PRESETS, *PEERS])}")
        compare(names, batch=args.batch, size=args.size or 32, steps=args.steps, warmup=args.warmup,
                dtype=autocast_dtype("cpu", args.dtype), channels_last=args.layout == "channels_last")
        return 0

    try:
        config = get_preset(args.preset, **({"image_size": args.size} if args.size else {}))
    except ValueError as exc:
        p.error(str(exc))
    size = config.image_size
    dtype = autocast_dtype("cpu", args.dtype)
    torch.manual_seed(0)
    model = UNet(config)
    baseline_model = to_original_style(model)  # same weights, the original's way of computing
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, config.in_channels, size, size, generator=g)
    noise = torch.randn(x.shape, generator=g)
    t = torch.randint(0, 1000, (args.batch,), generator=g)

    print(f"UNet training step: preset {config.preset} ({count_parameters(model):,} parameters), "
          f"batch {args.batch}, {size}x{size}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"ours: autocast {dtype or 'off (fp32)'}, channels_last, SDPA, broadcast time embedding, fused Adam")
    print("baseline: fp32, NCHW, nn.MultiheadAttention with weights, repeated time embedding, Adam")

    flops = count_step_flops(model, x, t, noise, dtype)

    ours = make_step(model, x=x, t=t, noise=noise, dtype=dtype, channels_last=True, fused_adam=True)
    base = make_step(baseline_model, x=x, t=t, noise=noise, dtype=None, channels_last=False, fused_adam=False)
    time_repeats(base, repeats=0, warmup=args.warmup)
    time_repeats(ours, repeats=0, warmup=args.warmup)
    base_times: list[float] = []
    our_times: list[float] = []
    base_cpu: list[float] = []
    our_cpu: list[float] = []
    for _ in range(args.steps):  # interleaved: noise from other processes hits both
        for fn, wall, cpu in ((base, base_times, base_cpu), (ours, our_times, our_cpu)):
            start = time.process_time()
            wall += time_repeats(fn, repeats=1, warmup=0)
            cpu.append(time.process_time() - start)

    peak_bf16 = matmul_peak(torch.bfloat16)
    peak_fp32 = matmul_peak(torch.float32)
    base_med, our_med = median(base_times), median(our_times)
    fmt_all = lambda ts: ", ".join(fmt_seconds(s) for s in ts)  # noqa: E731
    print(f"baseline step: median {fmt_seconds(base_med)}  ({fmt_all(base_times)})")
    print(f"ours step:     median {fmt_seconds(our_med)}  ({fmt_all(our_times)})")
    print(f"speed-up: {base_med / our_med:.2f}x  (target >= 3x)")
    # CPU seconds the process used: less sensitive than wall time to other processes on a shared box.
    print(f"process CPU time per step: baseline {fmt_seconds(median(base_cpu))}, ours {fmt_seconds(median(our_cpu))}"
          f" -> {median(base_cpu) / median(our_cpu):.2f}x")
    print(f"step FLOPs (forward + backward): {flops / 1e9:.4g} GFLOP")
    print(f"matmul peak (2048^3, same run): bf16 {peak_bf16 / 1e9:.0f} GFLOP/s, fp32 {peak_fp32 / 1e9:.0f} GFLOP/s"
          f" (bf16/fp32 = {peak_bf16 / peak_fp32:.2f}x)")
    print(f"ours achieves {flops / our_med / 1e9:.3g} GFLOP/s = {flops / our_med / peak_bf16:.1%} of the bf16 matmul peak; "
          f"baseline {flops / base_med / 1e9:.3g} GFLOP/s = {flops / base_med / peak_fp32:.1%} of the fp32 peak")
    if args.profile:
        print("\n== ours: one step, top ops by self CPU time ==")
        profile_step(ours)
        print("\n== baseline: one step, top ops by self CPU time ==")
        profile_step(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
