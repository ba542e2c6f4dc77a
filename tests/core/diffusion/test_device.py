"""Device resolution and the autocast dtype choice."""

from __future__ import annotations

import pytest
import torch

import core.diffusion.device as device_mod
from core.diffusion.device import autocast_context, autocast_dtype, resolve_device


def test_cpu_and_auto_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="'cuda' is not available: no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'cuda:1' is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="'mps' is not available"):
        resolve_device("mps")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_cuda_index_checked_against_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("CUDA") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"only 2 CUDA GPU\(s\)"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="expected cuda:N"):
        resolve_device("cuda:x")


def test_unknown_device_lists_the_choices():
    with pytest.raises(ValueError, match="unknown device 'tpu'; expected one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_autocast_dtype_modes(monkeypatch):
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "off") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 autocast is not supported on cpu"):
        autocast_dtype(cpu, "fp16")
    with pytest.raises(ValueError, match="unknown autocast mode 'half'"):
        autocast_dtype(cpu, "half")
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: True)
    assert autocast_dtype(cpu, "auto") is torch.bfloat16
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: False)
    assert autocast_dtype("cpu", "auto") is None


def test_autocast_dtype_on_cuda(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))
    assert autocast_dtype(cuda, "auto") is torch.bfloat16
    # bf16 "supported" by emulation (T4, V100): auto stays fp32, asked-for bf16 is allowed.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    assert autocast_dtype(cuda, "auto") is None
    assert autocast_dtype(cuda, "bf16") is torch.bfloat16
    # The run's own device is asked, not device 0.
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or (9, 0))
    assert autocast_dtype(torch.device("cuda", 1), "auto") is torch.bfloat16 and asked == [torch.device("cuda", 1)]
    with pytest.raises(ValueError, match="gradient scaler"):
        autocast_dtype(cuda, "fp16", training=True)
    assert autocast_dtype(cuda, "fp16") is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda, "auto") is None
    with pytest.raises(ValueError, match="does not support bfloat16"):
        autocast_dtype(cuda, "bf16")


def test_cpu_bf16_detection_reads_cpu_flags(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert device_mod.cpu_has_fast_bf16()
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert device_mod.cpu_has_fast_bf16()
    monkeypatch.setattr(device_mod, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not device_mod.cpu_has_fast_bf16()


def test_autocast_context():
    x = torch.randn(4, 4)
    with autocast_context("cpu", torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
    with autocast_context(torch.device("cpu"), None):
        assert (x @ x).dtype == torch.float32


def test_rank_device_uses_local_rank_only_when_that_many_gpus_are_visible(monkeypatch):
    from core.training.train import pick_rank_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert pick_rank_device(torch.device("cuda"), 3) == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # CUDA_VISIBLE_DEVICES=<one GPU> per process
    assert pick_rank_device(torch.device("cuda"), 3) == torch.device("cuda", 0)
    assert pick_rank_device(torch.device("cpu"), 3) == torch.device("cpu")


def test_cublas_workspace_is_set_before_cuda_starts(monkeypatch):
    from core.diffusion.device import set_cublas_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert set_cublas_deterministic() is True
    assert device_mod.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the other deterministic setting is kept
    assert set_cublas_deterministic() is True and device_mod.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    # Too late to be sure: CUDA already started without the setting. Set anyway, and say so.
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert set_cublas_deterministic() is False and device_mod.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_kernel_choices_are_restored_even_after_an_error():
    from core.diffusion.device import kernel_choices

    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark)
    with pytest.raises(RuntimeError, match="boom"):
        with kernel_choices(True) as line:
            assert "deterministic" in line
            assert (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark) == (
                True, True, False)
            raise RuntimeError("boom")
    assert (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark) == before
    with kernel_choices(False) as line:
        assert cudnn.benchmark and not torch.are_deterministic_algorithms_enabled() and "autotuning" in line
    assert (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark) == before


def test_free_device_memory(monkeypatch):
    from core.diffusion.device import free_device_memory

    assert free_device_memory(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (1000, 5000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: 300)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 100)
    assert free_device_memory(torch.device("cuda", 0)) == 1200  # the driver's free + PyTorch's unused cache

    def fails(d=None):
        raise RuntimeError("CUDA error: no device")

    monkeypatch.setattr(torch.cuda, "mem_get_info", fails)
    assert free_device_memory(torch.device("cuda", 0)) is None
