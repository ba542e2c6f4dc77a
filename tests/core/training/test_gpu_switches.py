"""--deterministic and --compile acting in the trainer itself: the cuBLAS workspace variable
set by the trainer (in a process that did not have it), an op without a deterministic kernel
raised by torch (not a message the test wrote), and the compiled step training the same
losses as the eager one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import core.training.build as build_mod
from core.training import runs
from core.training.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_dataset, tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "dogs")


CUBLAS_PROBE = """
import os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from test_train import make_dataset, tiny
from core.training.train import train
data = make_dataset(Path(sys.argv[2]) / "dogs")
assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
train(tiny(data, epochs=1, samples=0), Path(sys.argv[2]) / "plain")
print("plain:", os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
train(tiny(data, epochs=1, samples=0, deterministic=True), Path(sys.argv[2]) / "det")
print("deterministic:", os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
"""


def test_deterministic_sets_the_cublas_workspace_in_a_process_without_it(tmp_path: Path):
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once per process, so the trainer must set it
    itself: a fresh process without it, a run without --deterministic leaves it unset, a run
    with it sets the deterministic value."""
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", CUBLAS_PROBE, str(Path(__file__).parent), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-2:] == ["plain: None", "deterministic: :4096:8"], done.stdout


class _NoDeterministicKernel(build_mod.UNet):
    """Calls ``Tensor.put_``, an op torch has no deterministic kernel for on any device: under
    torch.use_deterministic_algorithms(True) torch itself raises, with its own words."""

    def forward(self, x, t, labels=None):
        scratch = torch.zeros(4, device=x.device)
        scratch.put_(torch.tensor([0, 0], device=x.device), torch.ones(2, device=x.device))
        return super().forward(x, t, labels) + scratch.sum() * 0


def test_an_op_without_a_deterministic_kernel_is_one_line(tmp_path: Path, data: Path, monkeypatch):
    monkeypatch.setattr(build_mod, "UNet", _NoDeterministicKernel)
    assert train(tiny(data, epochs=1, samples=0), tmp_path / "free")["state"] == "finished"  # the op runs
    final = train(tiny(data, epochs=1, samples=0, deterministic=True), tmp_path / "run")
    assert final["state"] == "failed"
    assert final["message"].startswith("--deterministic: this network uses put_, which has no deterministic "
                                       f"kernel on cpu in torch {torch.__version__}"), final["message"]
    assert final["message"].endswith("train without --deterministic")
    assert "\n" not in final["message"]


def test_compiled_step_trains_the_same_losses_as_eager(tmp_path: Path, data: Path, monkeypatch):
    """The trainer's real compiled step (Dynamo capture, AOTAutograd's forward and backward
    graphs) on the tiny network; "aot_eager" runs those graphs with eager kernels, so no
    C++/Triton build (inductor's kernels are checked on a GPU by the compile test in
    test_train.py and bench/gpu_check.py). Losses agree within float noise: the graphs
    reorder some float32 sums."""
    monkeypatch.setattr(build_mod, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    compiled = []
    real_compile = build_mod.compile_network
    monkeypatch.setattr(build_mod, "compile_network", lambda m: compiled.append(real_compile(m)) or compiled[-1])
    cfg = dict(epochs=1, batch_size=4, samples=0)  # 16 images: 4 steps, one batch size
    start = time.monotonic()
    assert train(tiny(data, compile=True, **cfg), tmp_path / "compiled")["state"] == "finished"
    seconds = time.monotonic() - start
    assert train(tiny(data, **cfg), tmp_path / "eager")["state"] == "finished"
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "OptimizedModule"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # Dynamo really captured a graph
    a = [r["loss"] for r in runs.read_metrics(tmp_path / "compiled")[0]]
    b = [r["loss"] for r in runs.read_metrics(tmp_path / "eager")[0]]
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5), (a, b)
    assert a[0] != a[-1]  # the weights moved: later steps' losses come from trained weights
    print(f"compiled run: {seconds:.1f} s")
    torch._dynamo.reset()
