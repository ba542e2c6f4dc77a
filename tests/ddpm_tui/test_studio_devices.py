"""The studio's device choices and the Sample screen's GPU manners (issue 14): the new-run
form and the Sample screen offer cuda:N for every visible GPU (CI has none: torch.cuda's
counts are stand-ins), a line says when a training run uses the chosen GPU, and the
sampling process (with the model and any CUDA context) ends when the user leaves the screen."""

from __future__ import annotations

import os
import time

import pytest
import torch
from textual.widgets import Input, Select, Static

from ddpm_tui import devices
from ddpm_tui.app import StudioApp
from ddpm_tui.jobs import pid_alive, train_command
from ddpm_tui.draw_worker import DrawProcess
from ddpm_tui.screens.newrun import NewRunScreen
from studio_helpers import make_checkpoint_run, make_dataset, run_async, wait_for


@pytest.fixture
def two_gpus(monkeypatch):
    """torch sees two CUDA GPUs (counting only: nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    devices.forget_choices()
    yield
    devices.forget_choices()


@pytest.fixture
def no_gpu():
    devices.forget_choices()
    yield
    devices.forget_choices()


@pytest.fixture
def one_thread_children(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the sampling process: no thread thrash on 2 cores


def app_for(workspace, mode: str) -> StudioApp:
    return StudioApp(workspace, start_mode=mode, sysmon=False, color_mode="truecolor", poll_interval=0.25)


def options_of(select: Select) -> list[str]:
    return [value for _, value in select._options if value is not Select.BLANK]


def test_choices_come_from_the_option_and_core_device(two_gpus, monkeypatch):
    assert devices.device_choices() == ["auto", "cpu", "cuda:0", "cuda:1"]
    devices.forget_choices()
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert devices.device_choices() == ["auto", "cpu", "cuda:0", "cuda:1", "mps"]
    assert devices.gpu_of("auto", ["auto", "cpu", "cuda:0", "cuda:1"]) == 0
    assert devices.gpu_of("cuda:1", ["auto", "cpu", "cuda:0", "cuda:1"]) == 1
    assert devices.gpu_of("cpu", ["auto", "cpu", "cuda:0"]) is None
    assert devices.gpu_of("auto", ["auto", "cpu"]) is None  # auto without a GPU is the CPU


def test_choices_without_gpu_are_auto_and_cpu(no_gpu):
    assert devices.device_choices() == ["auto", "cpu"]


def test_new_run_form_offers_each_gpu_and_passes_the_choice_on(workspace, two_gpus):
    make_dataset(workspace.dataset_dir(), {"beagle": 2})

    async def go():
        app = app_for(workspace, "train")
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await pilot.press("n")
            await wait_for(pilot, lambda: isinstance(app.screen, NewRunScreen), 10, "the new-run form")
            form = app.screen
            select = form.query_one("#device", Select)
            await wait_for(pilot, lambda: "cuda:1" in options_of(select), 30, "the GPU choices")
            assert options_of(select) == ["auto", "cpu", "cuda:0", "cuda:1"]
            select.value = "cuda:1"
            form.query_one("#name", Input).value = "g1"
            return form.collect()

    run = run_async(go())
    assert run.options["device"] == "cuda:1"
    cmd = train_command(run.name, run.options, workspace)
    assert cmd[cmd.index("--device") + 1] == "cuda:1"


def test_sample_screen_says_when_a_run_trains_on_the_chosen_gpu(workspace, two_gpus):
    from core.training.runs import write_status

    make_checkpoint_run(workspace, "done", image_size=16, T=10)
    busy = make_checkpoint_run(workspace, "busy", image_size=16, T=10)
    write_status(busy, state="running", device="cuda:1", world_size=1)  # this process: alive, this host

    async def go():
        app = app_for(workspace, "sample")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            select = screen.query_one("#device", Select)
            note = screen.query_one("#sample-gpu-note", Static)
            await wait_for(pilot, lambda: "cuda:1" in options_of(select), 30, "the GPU choices")
            assert select.value == "auto" and not note.display  # auto is cuda:0: nothing trains there
            select.value = "cuda:1"
            await wait_for(pilot, lambda: note.display, 10, "the note")
            text = str(note.render())
            assert "training run busy is running on cuda:1" in text and "\n" not in text.strip()
            select.value = "cuda:0"
            await wait_for(pilot, lambda: not note.display, 10, "the note to go")
            select.value = "cpu"
            await pilot.pause(0.2)
            assert not note.display

    run_async(go())


@pytest.mark.slow
def test_sampling_process_ends_when_leaving_the_sample_screen(workspace, no_gpu, one_thread_children):
    make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)

    async def go():
        app = app_for(workspace, "sample")
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: screen.query_one("#checkpoint", Select).value != Select.BLANK, 20,
                           "the checkpoint choice")
            select = screen.query_one("#device", Select)
            await wait_for(pilot, lambda: "cpu" in options_of(select), 30, "the device choices")
            select.value = "cpu"
            screen.query_one("#steps", Input).value = "3"
            screen.query_one("#count", Input).value = "2"
            app.set_focus(None)
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen._result is not None, 120, "the samples")
            assert screen._result.images.shape == (2, 16, 16, 3)
            assert "· cpu ·" in str(screen.query_one("#sample-status", Static).render())
            pid = screen._drawer.pid
            assert pid_alive(pid)  # kept while the screen shows: drawing again needs no reload
            await pilot.press("f1")  # a dialog over the screen keeps it
            await pilot.pause(0.3)
            assert screen._drawer is not None and screen._drawer.pid == pid
            await pilot.press("escape")
            await pilot.press("3")  # to Train: the process and its model go
            await wait_for(pilot, lambda: screen._drawer is None, 10, "the release")
            await wait_for(pilot, lambda: not pid_alive(pid), 30, "the sampling process to end")
            await pilot.press("4")  # back: a new process draws the same images
            first = screen._result.images
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen._result is not None and screen._result.images is not first, 120,
                           "the second samples")
            assert (screen._result.images == first).all()
            assert screen._drawer.pid != pid

    run_async(go())


def test_an_unavailable_device_is_one_line_from_the_sampling_process(workspace, one_thread_children):
    """The device reaches core.diffusion.device in the child: cuda:1 on a machine without CUDA says so."""
    make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)
    sampler = DrawProcess(workspace.cache_dir / "sampler.log")
    job = {"checkpoint": str(workspace.run_dir("tiny-run") / "checkpoints" / "last.pt"),
           "options": {"n": 1, "steps": 2}, "device": "cuda:1"}
    try:
        messages = list(sampler.run(job, lambda: False))
        assert messages == [("failed", "device 'cuda:1' is not available: no CUDA GPU is visible to PyTorch")]
        job["checkpoint"] = str(workspace.root / "missing.pt")
        job["device"] = "cpu"
        (kind, text), = list(sampler.run(job, lambda: False))
        assert kind == "failed" and text.startswith("cannot load ") and "missing.pt" in text
    finally:
        sampler.close()


def test_a_dead_sampling_process_is_said_and_replaced(workspace, one_thread_children):
    make_checkpoint_run(workspace, "tiny-run", image_size=16, T=10)
    sampler = DrawProcess(workspace.cache_dir / "sampler.log")
    job = {"checkpoint": str(workspace.run_dir("tiny-run") / "checkpoints" / "last.pt"),
           "options": {"n": 1, "steps": 2, "seed": 4}, "device": "cpu"}
    try:
        first = list(sampler.run(job, lambda: False))
        assert first[-1][0] == "done" and first[-1][4] == "cpu"
        pid = sampler.pid
        os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while sampler.running and time.monotonic() < deadline:
            time.sleep(0.05)
        again = list(sampler.run(job, lambda: False))  # a new process, the same images
        assert again[-1][0] == "done" and sampler.pid != pid
        assert (again[-1][1] == first[-1][1]).all()
        # cancelled before it starts drawing: the child says so and stays usable
        assert list(sampler.run(job, lambda: True))[-1] == ("failed", "cancelled")
        assert list(sampler.run(job, lambda: False))[-1][0] == "done"
    finally:
        sampler.close()
