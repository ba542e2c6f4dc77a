"""Fixtures shared by every test folder."""

from __future__ import annotations

import os

import pytest

# cuBLAS reads this once, at the process's first matmul on CUDA; a --deterministic test on a
# GPU may run after other tests used CUDA, too late for the trainer to set it. That the
# trainer sets it itself is checked in a fresh process without it (test_gpu_switches.py).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test. Tiny models and element-wise math on small
    tensors gain nothing from a second thread, and on a busy 2-core machine every op then
    waits for the other core (seen: a 3-step tiny-UNet sample took 6 s instead of 0.03 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_disk(tmp_path, request):
    """``small_disk("64k")`` mounts a tmpfs of that size and returns its path, to test what
    a full disk does; unmounted after the test. Skips where mounting is not allowed."""
    import os
    import subprocess

    mounted = []

    def mount(size: str, name: str = "small-disk"):
        # The skip line names what is left untested and why; -ra (pyproject's addopts) puts it
        # in the summary, with the test's name.
        untested = f"{request.node.name}: full-disk behaviour NOT tested"
        if os.geteuid() != 0:
            pytest.skip(f"{untested}: mounting a {size} tmpfs needs root and this runs as uid {os.geteuid()} "
                        "(run the suite as root, e.g. in CI's container, to test it)")
        path = tmp_path / name
        path.mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()[:1] or [f"exit status {done.returncode}"]
            pytest.skip(f"{untested}: `{' '.join(cmd[:5])} ...` failed here: {why[0][:200]}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], capture_output=True)
