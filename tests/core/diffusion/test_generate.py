"""core.diffusion.sampling.generate: the one sampling path (batches, weights, labels, OOM, NaN)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from core.diffusion.checkpoint import save_checkpoint
from core.diffusion.process import Diffusion, DiffusionConfig
from core.diffusion.ema import EMA
from core.diffusion.sampling import (
    SampleRequest,
    SamplingError,
    generate,
    generate_images,
    load_for_sampling,
    resolve_labels,
)
from core.diffusion.samplers import ddim_sample
from core.io.grid import to_uint8_images
from core.diffusion.unet import UNet, get_preset

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@dataclass
class _Config:
    image_size: int = 4
    in_channels: int = 3
    num_classes: int = 0


class _Stub(nn.Module):
    """A tiny model-shaped stub that records batch sizes and can fail on demand."""

    def __init__(self, num_classes: int = 0, fail: BaseException | None = None, fail_on_to: bool = False,
                 output: float | None = None) -> None:
        super().__init__()
        self.config = _Config(num_classes=num_classes)
        self.null_label = num_classes
        self.w = nn.Parameter(torch.tensor(0.1))
        self.fail, self.fail_on_to, self.output = fail, fail_on_to, output
        self.batches: list[int] = []
        self.labels: list = []

    def to(self, *args, **kwargs):
        if self.fail_on_to:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().to(*args, **kwargs)

    def forward(self, x, t, labels=None):
        self.batches.append(x.shape[0])
        self.labels.append(None if labels is None else labels.tolist())
        if self.fail is not None:
            raise self.fail
        if self.output is not None:
            return torch.full_like(x, self.output)
        return self.w * x


D = Diffusion(DiffusionConfig(T=10))


def test_batches_bound_memory_and_match_one_call():
    model = _Stub()
    request = SampleRequest(n=7, steps=3, batch_size=3, seed=4, weights="raw", amp="off")
    steps = list(generate((model, D), request, device="cpu"))
    assert set(model.batches) == {3, 1} and max(model.batches) == 3
    finished = [s for s in steps if s.images is not None]
    assert [(s.batch, s.first, len(s.images)) for s in finished] == [(0, 0, 3), (1, 3, 3), (2, 6, 1)]
    assert all(s.batches == 3 and s.weights == "raw" for s in steps)
    images, weights = generate_images((model, D), request, device="cpu")
    assert images.shape == (7, 4, 4, 3) and images.dtype == torch.uint8 and weights == "raw"
    # the first batch is one sampler call with the same seed
    ref = ddim_sample(model, D, (3, 3, 4, 4), steps=3, seed=4, autocast=None)
    assert torch.equal(images[:3], to_uint8_images(ref))


def test_labels_each_class_in_turn_a_breed_or_unconditional():
    assert resolve_labels(SampleRequest(n=5), 3) == [0, 1, 2, 0, 1]
    assert resolve_labels(SampleRequest(n=2, breed="golden_retriever"), 2, ["beagle", "Golden Retriever"]) == [1, 1]
    assert resolve_labels(SampleRequest(n=2, label=0), 2) == [0, 0]
    assert resolve_labels(SampleRequest(n=2, unconditional=True), 2) is None
    assert resolve_labels(SampleRequest(n=2), 0) is None
    with pytest.raises(ValueError, match="unknown breed 'pug'; this run knows: beagle, corgi"):
        resolve_labels(SampleRequest(breed="pug"), 2, ["beagle", "corgi"])
    with pytest.raises(ValueError, match="unconditional"):
        resolve_labels(SampleRequest(breed="pug"), 0)
    with pytest.raises(ValueError, match="label 5 is out of range"):
        resolve_labels(SampleRequest(label=5), 2)
    model = _Stub(num_classes=2)
    list(generate((model, D), SampleRequest(n=3, steps=2, guidance=2.0, weights="raw", amp="off"), device="cpu"))
    assert model.labels[0] == [0, 1, 0, 2, 2, 2] and model.batches[0] == 6  # guided: cond + null halves


@pytest.mark.parametrize("field,value,match", [("n", 0, "n must be"), ("seed", 2**63, "seed must be"),
                                               ("sampler", "euler", "unknown sampler 'euler'"),
                                               ("weights", "best", "weights must be"), ("eta", 2.0, "eta")])
def test_request_is_validated(field, value, match):
    with pytest.raises(ValueError, match=match):
        SampleRequest(**{field: value})


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 9 bytes. Error code 12 "
                                                "(Cannot allocate memory) out of memory")])
def test_out_of_memory_on_any_device_is_one_line(error):
    with pytest.raises(SamplingError, match="out of memory on cpu drawing a batch of 4 image") as info:
        list(generate((_Stub(fail=error), D), SampleRequest(n=9, batch_size=4, steps=2, weights="raw"), device="cpu"))
    assert "\n" not in str(info.value)


def test_out_of_memory_moving_the_model_is_caught_too():
    with pytest.raises(SamplingError, match="out of memory"):
        list(generate((_Stub(fail_on_to=True), D), SampleRequest(n=2, steps=2, weights="raw"), device="cpu"))


def test_other_errors_are_not_called_out_of_memory():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(generate((_Stub(fail=RuntimeError("shape mismatch")), D), SampleRequest(n=2, steps=2), device="cpu"))


def test_nan_weights_and_nan_output_are_refused():
    model = _Stub()
    with torch.no_grad():
        model.w.fill_(float("nan"))
    with pytest.raises(SamplingError, match="raw weights contain NaN"):
        list(generate((model, D), SampleRequest(n=2, steps=2, weights="raw"), device="cpu"))
    with pytest.raises(SamplingError, match="NaN or infinite values in 2 of 2 image"):
        list(generate((_Stub(output=float("nan")), D), SampleRequest(n=2, steps=2, amp="off"), device="cpu"))


def test_load_for_sampling_reports_the_weights_it_used(tmp_path):
    torch.manual_seed(0)
    model = UNet(get_preset("tiny", image_size=16))
    ema = EMA(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # raw and EMA weights differ
    common = dict(model_config=model.config, diffusion_config=DiffusionConfig(T=10), model_state=model.state_dict(),
                  step=5, extra={"classes": []})
    save_checkpoint(tmp_path / "with.pt", ema_state=ema.state_dict(), **common)
    save_checkpoint(tmp_path / "without.pt", **common)
    a = load_for_sampling(tmp_path / "with.pt", "ema")
    b = load_for_sampling(tmp_path / "with.pt", "raw")
    c = load_for_sampling(tmp_path / "without.pt", "ema")
    assert (a.weights, a.weights_note) == ("ema", "EMA") and (b.weights, b.weights_note) == ("raw", "raw")
    assert (c.weights, c.weights_note) == ("raw", "raw (this checkpoint has no EMA weights)")
    assert a.step == 5 and not torch.equal(next(a.model.parameters()), next(b.model.parameters()))
    request = SampleRequest(n=2, steps=2, weights="ema", amp="off")
    last = list(generate(tmp_path / "without.pt", request, device="cpu"))[-1]
    assert last.weights == "raw" and last.images is not None
