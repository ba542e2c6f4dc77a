"""The system monitor (issue 14): GPUs labelled by CUDA index under CUDA_VISIBLE_DEVICES
(indices, GPU- and MIG- UUIDs), the selected run's GPUs marked, one failing GPU shown as
its own line while the others keep updating. CI has no GPU: a stand-in `pynvml` module."""

from __future__ import annotations

import sys
import types

import pytest

from ddpm_tui.sysmon import GPUInfo, NvmlUnit, SystemMonitor, SystemSnapshot, cuda_units, describe, run_gpus
from studio_helpers import run_async, wait_for

GiB = 1 << 30


class NVMLError(Exception):
    pass


def fake_nvml(gpus: list[dict]) -> types.ModuleType:
    """A `pynvml` over ``gpus`` (NVML order): uuid, bus, name, used (GiB), util, temp; ``lost``
    makes the handle fail; ``broken`` makes reading the figures fail; ``mig`` lists MIG uuids."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.NVML_TEMPERATURE_GPU = 0
    nv.nvmlInit = lambda: None
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: len(gpus)

    def handle(i):
        if gpus[i].get("lost"):
            raise NVMLError("GPU is lost")
        return ("gpu", i)

    def gpu(h):
        return gpus[h[1]] if h[0] == "gpu" else {**gpus[h[1]], "name": "MIG 1g.18gb", "util": None,
                                                 "uuid": gpus[h[1]]["mig"][h[2]]}

    def figures(h):
        if gpu(h).get("broken"):
            raise NVMLError(gpu(h)["broken"])
        return gpu(h)

    nv.nvmlDeviceGetHandleByIndex = handle
    nv.nvmlDeviceGetUUID = lambda h: gpu(h)["uuid"].encode()
    nv.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=gpu(h)["bus"].encode())
    nv.nvmlDeviceGetName = lambda h: figures(h)["name"]
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=figures(h).get("used", 1) * GiB, total=80 * GiB)

    def util(h):
        if gpu(h).get("util") is None:
            raise NVMLError("Not Supported")  # MIG slices do not report it
        return types.SimpleNamespace(gpu=gpu(h)["util"])

    nv.nvmlDeviceGetUtilizationRates = util
    nv.nvmlDeviceGetTemperature = lambda h, kind: 50 + h[1]
    nv.nvmlDeviceGetMigMode = lambda h: [1 if gpus[h[1]].get("mig") else 0, 0]
    nv.nvmlDeviceGetMaxMigDeviceCount = lambda h: 7

    def mig_handle(h, j):
        if j >= len(gpus[h[1]].get("mig", [])):
            raise NVMLError("Not Found")
        return ("mig", h[1], j)

    nv.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    return nv


def four_gpus(**changes) -> list[dict]:
    gpus = [{"uuid": f"GPU-{c * 8}-0000", "bus": f"00000000:{bus}:00.0", "name": "NVIDIA H200", "used": i + 1,
             "util": 10 * (i + 1)} for i, (c, bus) in enumerate(zip("abcd", ("17", "2A", "65", "9B")))]
    for index, values in changes.items():
        gpus[int(index[1:])].update(values)
    return gpus


def monitor(monkeypatch, gpus: list[dict], visible: str | None) -> SystemMonitor:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(gpus))
    return SystemMonitor(visible=visible)


# -- mapping NVML to CUDA -------------------------------------------------------------------


def units() -> list[NvmlUnit]:
    out = [NvmlUnit(str(i), i, uuid=f"GPU-{c * 8}-0000", bus_id=f"0:{i}") for i, c in enumerate("abcd")]
    out.append(NvmlUnit("3/0", "m", uuid="MIG-5f3e-0000", bus_id="0:3", mig=True))
    return out


@pytest.mark.parametrize("visible,expected", [
    (None, ["0", "1", "2", "3"]),  # unset: every whole GPU, not the MIG device
    ("2,0", ["2", "0"]),  # cuda:0 is NVML's GPU 2
    ("1gpu,3", ["1", "3"]),  # read like strtoul, as CUDA does
    ("1,7,2", ["1"]),  # an index past the GPUs ends the list
    ("1,1", []),  # a repeat empties it (as PyTorch reads it)
    ("", []), ("-1", []), ("0,-1,2", ["0"]),
    ("GPU-cccc,GPU-a", ["2", "0"]),  # UUID prefixes
    ("GPU-,0", []),  # an ambiguous prefix names nothing: the list ends
    ("MIG-5f3e", ["3/0"]), ("GPU-bbbbbbbb-0000,MIG-5f", ["1", "3/0"]),
    ("nvidia0", []),  # not an entry CUDA knows: nothing after it either
])
def test_cuda_visible_devices_is_read_as_cuda_reads_it(visible, expected):
    assert [u.nvml for u in cuda_units(visible, units())] == expected


def test_gpus_are_labelled_by_cuda_index_and_hidden_ones_said(monkeypatch):
    mon = monitor(monkeypatch, four_gpus(), "3,1")
    lines = describe(mon.snapshot())
    assert lines[0] == "cuda:0 (nvidia-smi 3) NVIDIA H200: 40%  4.0 GiB/80.0 GiB  53°C"
    assert lines[1] == "cuda:1 NVIDIA H200: 20%  2.0 GiB/80.0 GiB  51°C"  # same index both ways: no aside
    assert lines[2] == "not visible to CUDA (CUDA_VISIBLE_DEVICES): nvidia-smi GPU 0, 2"
    assert lines[3].startswith("CPU ")
    by_uuid = describe(monitor(monkeypatch, four_gpus(), "GPU-dddd").snapshot())
    assert by_uuid[0].startswith("cuda:0 (nvidia-smi 3) ")
    none = describe(monitor(monkeypatch, four_gpus(), "").snapshot())
    assert none[0] == "no GPU visible to CUDA (CUDA_VISIBLE_DEVICES=)"
    assert none[1] == "not visible to CUDA (CUDA_VISIBLE_DEVICES): nvidia-smi GPU 0, 1, 2, 3"


def test_cuda_counts_in_pci_bus_order(monkeypatch):
    """NVML's GPU 0 sits on a later bus than its GPU 1: CUDA (PCI_BUS_ID order) calls GPU 1 cuda:0."""
    gpus = four_gpus(g0={"bus": "00000000:C1:00.0"})
    lines = describe(monitor(monkeypatch, gpus, None).snapshot())
    assert [line.split(" NVIDIA")[0] for line in lines[:4]] == [
        "cuda:0 (nvidia-smi 1)", "cuda:1 (nvidia-smi 2)", "cuda:2 (nvidia-smi 3)", "cuda:3 (nvidia-smi 0)"]


def test_a_mig_device_is_found_by_its_uuid(monkeypatch):
    gpus = four_gpus(g2={"mig": ["MIG-11112222-aaaa", "MIG-33334444-bbbb"]})
    lines = describe(monitor(monkeypatch, gpus, "MIG-33334444").snapshot())
    assert lines[0] == "cuda:0 (nvidia-smi 2/1) MIG 1g.18gb: ?  3.0 GiB/80.0 GiB  52°C"
    # its parent GPU is not "hidden": CUDA uses a part of it
    assert lines[1] == "not visible to CUDA (CUDA_VISIBLE_DEVICES): nvidia-smi GPU 0, 1, 3"


def test_one_failing_gpu_is_its_own_line_and_the_others_go_on(monkeypatch):
    gpus = four_gpus(g1={"lost": True})
    mon = monitor(monkeypatch, gpus, None)
    lines = describe(mon.snapshot())
    assert lines[0].startswith("cuda:0 NVIDIA H200: 10%")
    assert lines[1] == "cuda:1: NVML error: GPU is lost"  # keeps its place: the others keep their index
    assert lines[2].startswith("cuda:2 NVIDIA H200: 30%") and lines[3].startswith("cuda:3 NVIDIA H200: 40%")
    # a GPU that fails later, with an error text that would drive the terminal: escaped
    gpus[2]["broken"] = "Unknown Error\x1b[2J\nforged line"
    lines = describe(mon.snapshot())
    assert lines[2] == "cuda:2: NVML error: Unknown Error\\e[2J\\nforged line"
    assert lines[3].startswith("cuda:3 NVIDIA H200: 40%")
    gpus[2]["broken"] = None  # it comes back
    assert describe(mon.snapshot())[2].startswith("cuda:2 NVIDIA H200: 30%")


def test_without_gpu_it_is_plain_not_an_error(monkeypatch):
    snap = SystemMonitor(use_gpu=False).snapshot()
    lines = describe(snap)
    assert snap.gpus == [] and lines[0] == "no GPU monitoring"
    assert lines[-1].startswith("CPU ") and "RAM" in lines[-1]
    nv = fake_nvml([])

    def no_driver():
        raise NVMLError("Driver Not Loaded")

    nv.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    assert describe(SystemMonitor().snapshot())[0] == "no NVIDIA GPU (NVML unavailable)"


# -- the run's GPUs -----------------------------------------------------------------------


@pytest.mark.parametrize("device,world,count,expected", [
    ("cuda:1", 1, 4, {1}), ("cuda", None, 2, {0}), ("auto", 1, 2, {0}), ("auto", 1, 0, set()),
    ("cpu", 1, 2, set()), ("mps", 1, 0, set()), (None, None, 1, {0}),
    ("cuda:0", 4, 4, {0, 1, 2, 3}),  # torchrun: local rank r on cuda:r
    ("cuda:0", 2, 1, {0}),  # each rank sees one GPU
])
def test_run_gpus_follow_the_trainer(device, world, count, expected):
    assert run_gpus(device, world, count) == expected


def test_the_runs_gpus_are_marked_and_kept_in_view():
    gpus = [GPUInfo(i, "H200", 5.0 * i, GiB, 80 * GiB, None) for i in range(6)]
    snap = SystemSnapshot(10.0, GiB, 4 * GiB, gpus)
    lines = describe(snap, {5})
    # at most 4 lines for GPUs: the run's GPU and the first others, then a summary
    assert lines[:3] == ["cuda:0 H200: 0%  1.0 GiB/80.0 GiB", "cuda:1 H200: 5%  1.0 GiB/80.0 GiB",
                         "cuda:5 H200: 25%  1.0 GiB/80.0 GiB ◀ this run"]
    assert lines[3] == "+ 3 more GPUs (cuda:2, cuda:3, cuda:4, 15% busy on average)"
    assert lines[4].startswith("CPU ")
    assert describe(SystemSnapshot(1.0, GiB, 4 * GiB, gpus[:2]), {1})[1].endswith("◀ this run")


def test_train_screen_marks_the_gpu_of_the_running_run(workspace, monkeypatch):
    """A run training here on cuda:1 (status.json says so): its line in the panel is marked."""
    from core.training.runs import write_config, write_status
    from ddpm_tui.app import StudioApp
    from ddpm_tui.widgets import sysmon as panel_module

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(four_gpus()))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(panel_module, "_MONITOR", None)  # a monitor over the fake NVML
    run_dir = workspace.run_dir("busy")
    write_config(run_dir, {"preset": "tiny", "device": "cuda:1"})
    write_status(run_dir, state="running", step=3, device="cuda:1", world_size=1)  # this process: alive

    async def go():
        app = StudioApp(workspace, start_mode="train", sysmon=True, color_mode="truecolor", poll_interval=0.25)
        async with app.run_test(size=(120, 40)) as pilot:
            panel = app.screen.query_one("#sysmon")
            await wait_for(pilot, lambda: "◀ this run" in str(panel.render()), 20, "the marked GPU")
            lines = str(panel.render()).splitlines()
            assert lines[1] == "cuda:1 NVIDIA H200: 20%  2.0 GiB/80.0 GiB  51°C ◀ this run"
            assert "◀" not in lines[0] + lines[2]

    try:
        run_async(go())
    finally:
        if panel_module._MONITOR is not None:
            panel_module._MONITOR.close()
