"""`ddpm-tui train / sample / runs / import-checkpoint` as a user runs them: in process through
ddpm_tui.cli.main, and as real subprocesses for signals, kill -9 and torchrun (DDP, gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.training import runs
from core.diffusion.checkpoint import load_checkpoint
from core.training.train import TrainConfig, weights_digest
from ddpm_tui.cli import main
from ddpm_tui.commands.train import parse_duration

REPO = Path(__file__).resolve().parents[2]
TINY = ["--preset", "tiny", "--image-size", "16", "--T", "50", "--batch-size", "4", "--samples", "2",
        "--sample-steps", "2", "--log-every", "1", "--amp", "off", "--workers", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace with data/dogs/<breed>/*.png: two breeds, eight 20x20 images each."""
    rng = np.random.default_rng(1)
    for b, breed in enumerate(("beagle", "pug")):
        folder = tmp_path / "data" / "dogs" / breed
        folder.mkdir(parents=True)
        for i in range(8):
            img = np.full((20, 20, 3), 30 + 90 * b, dtype=np.uint8)
            x, y = rng.integers(0, 10, size=2)
            img[y : y + 8, x : x + 8] = (220, 120, 40 + 150 * b)
            Image.fromarray(img).save(folder / f"{i}.png")
    return tmp_path


def cli(ws: Path, *args: str) -> int:
    return main(["--workspace", str(ws), *args])


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 120.0):
    """Poll until predicate() is truthy; fail (not flake on speed) only after a generous deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"process exited ({proc.returncode}) before {what}: {out[-2000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def status_step(run: Path) -> int:
    return (runs.read_status(run) or {}).get("step") or 0


# -- arguments and errors ------------------------------------------------------------------


def test_help_lists_the_original_flags_and_defaults_match_the_trainer(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--batch_size", "--batch-size", "--examples", "--T", "--device", "--lr", "--epochs",
                 "--samples", "--save_frequency", "--save-frequency", "--data", "--run", "--preset",
                 "--schedule", "--image-size", "--amp", "--channels-last", "--compile", "--max-time",
                 "--conditional", "--label-dropout", "--no-flip", "--quiet"):
        assert flag in out
    config = TrainConfig()
    assert (config.batch_size, config.T, config.lr, config.epochs, config.samples, config.save_frequency) == (
        16, 1000, 3e-4, 500, 10, 10)  # the original's defaults


def test_former_names_are_accepted_on_the_command_line():
    """--recipe seed, --preset seed and import-seed (names from before the rename) still work."""
    from ddpm_tui.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "--recipe", "seed", "--preset", "seed"])
    assert (args.recipe, args.preset) == ("classic", "classic")
    args = parser.parse_args(["train", "--recipe", "classic", "--preset", "classic"])
    assert (args.recipe, args.preset) == ("classic", "classic")
    assert parser.parse_args(["import-seed", "m.pth"]).func is parser.parse_args(["import-checkpoint", "m.pth"]).func


def test_wrong_flag_and_bad_values_are_usage_errors(ws: Path, capsys):
    for args in (["train", "--bogus"], ["train", "--batch_size", "0"], ["train", "--max-time", "soon"],
                 ["sample", "x", "--eta", "2"]):
        with pytest.raises(SystemExit) as info:
            cli(ws, *args)
        assert info.value.code == 2, args
    assert "--bogus" in capsys.readouterr().err
    assert [parse_duration(t) for t in ("90", "90s", "30m", "1.5h", "2d")] == [90, 90, 1800, 5400, 172800]


def test_missing_dataset_is_one_line_and_writes_nothing(tmp_path: Path, capsys):
    assert cli(tmp_path, "train", "--run", "r", *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dataset folder" in err and "does not exist" in err
    assert not (tmp_path / "runs" / "r").exists()
    assert cli(tmp_path, "train", "--run", "r", "--resume") == 2
    assert "no run named 'r'" in capsys.readouterr().err


# -- end to end ----------------------------------------------------------------------------


def test_train_sample_runs_end_to_end(ws: Path, capsys):
    assert cli(ws, "train", "--run", "r", *TINY, "--epochs", "2", "--save_frequency", "1", "--examples",
               "--quiet") == 0
    run = ws / "runs" / "r"
    assert runs.read_status(run)["state"] == "finished"
    for rel in ("config.json", "metrics.jsonl", "train.log", "checkpoints/last.pt", "examples.png",
                "forward_diffusion.png", "samples/epoch_0002.png", "samples/ema_epoch_0002.png"):
        assert (run / rel).is_file(), rel
    capsys.readouterr()

    assert cli(ws, "sample", "r", "--n", "3", "--steps", "3", "--seed", "7", "--individual", "--quiet") == 0
    paths = [Path(p) for p in capsys.readouterr().out.split()]
    assert len(paths) == 4 and all(p.is_file() for p in paths)
    assert paths[0].parent == run / "samples" and "ema" in paths[0].name and "seed7" in paths[0].name
    assert Image.open(paths[1]).size == (16, 16)
    # Same seed, same images; raw weights and DDPM through --out.
    assert cli(ws, "sample", "r", "--n", "3", "--steps", "3", "--seed", "7", "--quiet",
               "--out", str(ws / "again.png")) == 0
    capsys.readouterr()
    assert np.array_equal(np.asarray(Image.open(paths[0])), np.asarray(Image.open(ws / "again.png")))
    assert cli(ws, "sample", str(run / "checkpoints" / "last.pt"), "--raw", "--sampler", "ddpm", "--n", "2",
               "--seed", "1", "--quiet") == 0
    raw = Path(capsys.readouterr().out.split()[0])
    assert raw.is_file() and "raw_ddpm50" in raw.name

    assert cli(ws, "runs", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["state"], r["step"]) for r in listed] == [("r", "finished", 8)]
    assert cli(ws, "runs") == 0
    assert "finished" in capsys.readouterr().out
    assert cli(ws, "sample", "nope") == 2
    assert "runs: r" in capsys.readouterr().err


def test_resume_keeps_the_runs_options_and_refuses_a_changed_model(ws: Path, capsys):
    assert cli(ws, "train", "--run", "r", *TINY, "--epochs", "1", "--quiet") == 0
    # No --preset / --image-size given: the run's own (tiny, 16 px) are kept, and it continues.
    assert cli(ws, "train", "--run", "r", "--resume", "--epochs", "2", "--quiet") == 0
    assert runs.read_status(ws / "runs" / "r")["step"] == 8
    assert runs.read_config(ws / "runs" / "r")["preset"] == "tiny"
    capsys.readouterr()
    assert cli(ws, "train", "--run", "r", "--image-size", "32", "--epochs", "3", "--quiet") == 2
    err = capsys.readouterr().err
    assert "image_size: checkpoint 16 vs expected 32" in err and err.count("\n") == 1


def test_conditional_training_and_guided_sampling_by_breed(ws: Path, capsys):
    assert cli(ws, "train", "--run", "c", *TINY, "--epochs", "1", "--conditional", "--label-dropout", "0.2",
               "--quiet") == 0
    assert runs.read_config(ws / "runs" / "c")["classes"] == ["beagle", "pug"]
    capsys.readouterr()
    assert cli(ws, "sample", "c", "--breed", "PUG", "--guidance", "2.5", "--n", "2", "--steps", "2",
               "--seed", "3", "--quiet") == 0
    out = Path(capsys.readouterr().out.split()[0])
    assert out.is_file() and "_pug_g2.5_" in out.name
    assert cli(ws, "sample", "c", "--breed", "corgi", "--quiet") == 2
    assert "unknown breed 'corgi'; this run knows: beagle, pug" in capsys.readouterr().err
    assert cli(ws, "train", "--run", "u", *TINY, "--epochs", "1", "--samples", "0", "--quiet") == 0
    assert cli(ws, "sample", "u", "--breed", "pug", "--quiet") == 2
    assert "unconditional" in capsys.readouterr().err


# -- real processes ------------------------------------------------------------------------


def _start(ws: Path, run: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ddpm_tui", "--workspace", str(ws), "train", "--run", run, *TINY,
           "--epochs", "1000", "--quiet", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigterm_saves_marks_stopped_and_resumes(ws: Path):
    run = ws / "runs" / "t"
    proc = _start(ws, "t")
    wait_for(lambda: status_step(run) >= 3, "a few training steps", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    status = runs.read_status(run)
    assert status["state"] == "stopped" and "start the same run again" in status["message"]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == status["step"] >= 3
    target = ckpt["step"] + 2
    done = subprocess.run([sys.executable, "-m", "ddpm_tui", "--workspace", str(ws), "train", "--run", "t",
                           "--max-steps", str(target), "--quiet"], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert runs.read_status(run)["step"] == target
    assert f"continuing from step {ckpt['step']}" in (run / "train.log").read_text()
    # N steps, SIGTERM, more steps == the same number of steps straight: same weights.
    straight = subprocess.run([sys.executable, "-m", "ddpm_tui", "--workspace", str(ws), "train", "--run", "s",
                               *TINY, "--epochs", "1000", "--max-steps", str(target), "--quiet"], cwd=REPO,
                              env=env(), capture_output=True, text=True, timeout=180)
    assert straight.returncode == 0, straight.stderr
    a = load_checkpoint(run / "checkpoints" / "last.pt")
    b = load_checkpoint(ws / "runs" / "s" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == target
    assert weights_digest(a["model"]) == weights_digest(b["model"])
    assert weights_digest(a["ema"]["shadow"]) == weights_digest(b["ema"]["shadow"])


@pytest.mark.slow
def test_kill_9_while_writing_then_restart_continues(ws: Path):
    run = ws / "runs" / "k"
    proc = _start(ws, "k", "--save-every-steps", "1")  # checkpoints constantly: the kill lands mid-write often
    last = run / "checkpoints" / "last.pt"
    wait_for(lambda: last.exists() and status_step(run) >= 4, "checkpoints being written", proc)
    proc.kill()
    proc.wait(timeout=60)
    assert runs.run_info(run).state == "died"  # status still says running, the process is gone
    ckpt = load_checkpoint(last)  # never half written
    assert ckpt["step"] >= 1
    # The new run's recipe (fast) has the power EMA: its snapshots are written beside last.pt.
    snapshots = last.parent / "ema"
    leftovers = [p.name for p in [*last.parent.iterdir(), *snapshots.iterdir()] if p.name not in ("last.pt", "ema")
                 and not p.name.startswith("ema_")]
    target = ckpt["step"] + 2
    done = subprocess.run([sys.executable, "-m", "ddpm_tui", "--workspace", str(ws), "train", "--run", "k",
                           "--max-steps", str(target), "--quiet"], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert runs.read_status(run)["state"] == "finished"
    assert load_checkpoint(last)["step"] == target
    assert f"continuing from step {ckpt['step']}" in (run / "train.log").read_text()
    # At most the temp file of the interrupted write was left; the restart removed it.
    assert all(name.startswith((".last.pt.", ".ema_")) for name in leftovers), leftovers
    assert sorted(p.name for p in last.parent.iterdir()) == ["ema", "last.pt"]
    assert not [p.name for p in snapshots.iterdir() if not p.name.startswith("ema_")]


@pytest.mark.slow
def test_ddp_gloo_two_processes_one_run_same_weights(ws: Path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ddpm_tui", "--workspace", str(ws), "train", "--run-name", "d", *TINY, "--epochs", "2",
           "--device", "cpu", "--quiet"]
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (ws / "runs").iterdir()) == ["d"]
    run = ws / "runs" / "d"
    status = runs.read_status(run)
    # 16 images, 2 ranks, batch 4: 2 steps an epoch, each seeing 8 images.
    assert status["state"] == "finished" and status["step"] == 4 and status["world_size"] == 2
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["extra"]["world_size"] == 2
    log = (run / "train.log").read_text()
    assert f"all 2 ranks hold identical weights (sha256 {weights_digest(ckpt['model'])})" in log
    assert log.count("starting run d") == 1  # only rank 0 writes the run directory


# -- the original project's checkpoints -----------------------------------------------------


ORIGINAL_KEYS = REPO / "tests" / "core" / "diffusion" / "original_state_dict_keys.tsv"  # from the original's model_state.pth


def _original_state_dict() -> dict[str, torch.Tensor]:
    """Random weights shaped like the original's model_state.pth (its real key list)."""
    rows = [line.split("\t") for line in ORIGINAL_KEYS.read_text().splitlines()[1:] if line.strip()]
    shapes = {key: tuple(int(s) for s in shape.split("x")) if shape else () for key, shape in rows}
    gen = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=gen) * 0.02 for key, shape in shapes.items()}


@pytest.mark.slow
def test_import_checkpoint_then_sample(ws: Path, tmp_path: Path, capsys):
    state = _original_state_dict()
    pth = tmp_path / "model_state.pth"
    torch.save(state, pth)
    broken = dict(state)
    broken.pop("output.weight")
    torch.save(broken, tmp_path / "broken.pth")
    del state, broken
    (tmp_path / "notes.pth").write_text("not a checkpoint")

    assert cli(ws, "import-checkpoint", str(tmp_path / "notes.pth")) == 2
    assert "notes.pth: not a PyTorch state dict" in capsys.readouterr().err
    assert cli(ws, "import-checkpoint", str(tmp_path / "broken.pth"), "--run", "b") == 2
    assert "missing key 'output.weight'" in capsys.readouterr().err
    assert not (ws / "runs" / "b").exists()

    assert cli(ws, "import-checkpoint", str(pth), "--run", "orig", "--T", "1000") == 0
    capsys.readouterr()
    run = ws / "runs" / "orig"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["model_config"]["preset"] == "classic" and ckpt["step"] == 0
    assert torch.equal(ckpt["ema"]["shadow"]["output.weight"], ckpt["model"]["output.weight"])
    assert runs.read_status(run)["state"] == "stopped"
    assert runs.read_config(run)["preset"] == "classic"
    del ckpt
    assert cli(ws, "sample", "orig", "--n", "1", "--steps", "2", "--seed", "0", "--quiet") == 0
    out = Path(capsys.readouterr().out.split()[0])
    assert Image.open(out).size == (68, 68)  # one 64x64 image with its 2 px border
    assert cli(ws, "import-checkpoint", str(pth), "--run", "orig") == 2  # never overwrites a run
    assert "already exists" in capsys.readouterr().err
    assert cli(ws, "import-seed", str(pth), "--run", "orig") == 2  # the former name is the same command
    assert "already exists" in capsys.readouterr().err


# -- one trainer per run, and one clear line for what cannot work ------------------------------


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, b"%d\\n" % os.getpid(), 0)
print("held", flush=True)
sys.stdin.read()  # holds the lock until the test closes stdin
"""


def test_a_run_whose_lock_another_process_holds_is_refused_by_the_lock(ws: Path, capsys):
    """The flock itself, from a second process: no status.json, so the pid check has nothing
    to go on and only the lock can refuse; its line names the lock. Once the holder is gone
    (the kernel drops its flock), the run trains."""
    run = ws / "runs" / "same"
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / runs.LOCK_FILE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # it says when it holds the lock: no sleep
        assert runs.read_status(run) is None
        assert cli(ws, "train", "--run", "same", *TINY, "--epochs", "1", "--samples", "0", "--quiet") == 2
        err = capsys.readouterr().err
        assert f"run 'same' is already training: pid {holder.pid} holds its lock (train.lock)" in err, err
        assert err.strip().count("\n") == 0, err
        assert runs.read_metrics(run)[0] == [] and not runs.checkpoints_dir(run).exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert cli(ws, "train", "--run", "same", *TINY, "--epochs", "1", "--samples", "0", "--quiet") == 0
    assert runs.read_status(run)["state"] == "finished"


def test_a_run_whose_status_names_a_live_trainer_is_refused_by_the_pid_check(ws: Path, capsys):
    """The other guard, without the lock: status.json says running, by a live pid (1). Its
    line names the pid and host, not the lock, so the two guards are told apart."""
    import socket

    run = ws / "runs" / "busy"
    run.mkdir(parents=True)
    runs.write_status(run, state="running", pid=1, host=socket.gethostname())
    assert cli(ws, "train", "--run", "busy", *TINY, "--epochs", "1", "--quiet") == 2
    err = capsys.readouterr().err
    assert f"run 'busy' is already training (pid 1 on {socket.gethostname()}); stop it first" in err, err
    assert "lock" not in err and err.strip().count("\n") == 0, err


def test_bad_inputs_are_one_line_and_leave_no_failed_run(ws: Path, tmp_path: Path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["--workspace", str(afile), "train", "--run", "r", *TINY], "is a file, not a folder"),
        (["train", "--run", "big", *TINY, "--image-size", "2048"], "image_size must be between"),
        (["train", "--run", "a" * 300, *TINY], "(300 characters)"),
        (["train", "--run", "d", *TINY, "--data", str(afile)], "is a file, not a folder of breed folders"),
    ]
    for args, expected in cases:
        full = args if args[0] == "--workspace" else ["--workspace", str(ws), *args]
        assert main(full) == 2, args
        err = capsys.readouterr().err
        assert expected in err and err.strip().count("\n") == 0, (args, err)
    assert not (ws / "runs").exists() or sorted(p.name for p in (ws / "runs").iterdir()) == []
    with pytest.raises(SystemExit) as info:
        cli(ws, "train", "--seed", "99999999999999999999")
    assert info.value.code == 2
    assert "seed must be in [0, 9223372036854775807]" in capsys.readouterr().err


def test_missing_or_garbled_config_json_is_named(ws: Path, capsys):
    assert cli(ws, "train", "--run", "r", *TINY, "--epochs", "1", "--samples", "0", "--quiet") == 0
    config = ws / "runs" / "r" / "config.json"
    config.write_text("{not json")
    assert cli(ws, "train", "--run", "r", "--epochs", "2", "--quiet") == 2
    err = capsys.readouterr().err
    assert "config.json is not valid JSON" in err and "dataset" not in err
    config.unlink()
    assert cli(ws, "train", "--run", "r", "--epochs", "2", "--quiet") == 2
    assert "config.json is missing" in capsys.readouterr().err


def test_read_only_and_full_workspaces_are_one_line(ws: Path, small_disk, capsys):
    data = str(ws / "data" / "dogs")
    ro = small_disk("1m", "ro")
    assert subprocess.run(["mount", "-o", "remount,ro", str(ro)]).returncode == 0
    assert cli(ro, "train", "--run", "r", *TINY, "--data", data, "--quiet") == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and err.strip().count("\n") == 0

    full = small_disk("8k", "full")  # room for the lock, not for the log and status
    code = cli(full, "train", "--run", "r", *TINY, "--data", data, "--quiet")
    err = capsys.readouterr().err
    assert code in (1, 2) and "Traceback" not in err and "No space left on device" in err, err
    assert all(line.startswith("ddpm-tui:") for line in err.strip().splitlines()), err
    status = runs.read_status(full / "runs" / "r")
    assert status is None or status["state"] == "failed"


def test_checkpoint_on_a_full_disk_says_no_space(ws: Path, small_disk, capsys):
    disk = small_disk("256k")  # the run starts; its first checkpoint (~5 MB) does not fit
    code = cli(disk, "train", "--run", "r", *TINY, "--epochs", "1", "--samples", "0",
               "--data", str(ws / "data" / "dogs"), "--quiet")
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "enforce fail" not in err, err
    assert all(line.startswith("ddpm-tui:") for line in err.strip().splitlines()), err
    status = runs.read_status(disk / "runs" / "r")
    assert status["state"] == "failed" and "No space left on device" in status["message"]


RANK0_FAILS = """
import os, sys, torch
import core.training.saving as saving
def boom(self, *a, **k):
    if self.world.rank == 0:
        raise torch.OutOfMemoryError("CUDA out of memory (rank 0 only, while sampling the grids)")
    return []
saving.Saver.sample_grids = boom
from ddpm_tui.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ddp_a_rank0_only_failure_ends_every_rank(ws: Path, tmp_path: Path):
    script = tmp_path / "rank0_fails.py"
    script.write_text(RANK0_FAILS)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "--workspace", str(ws), "train", "--run-name", "d", *TINY, "--epochs", "2", "--save_frequency", "1",
           "--device", "cpu", "--quiet"]
    # A hang would wait for the collective timeout (30 min): the deadline here is far below it.
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    status = runs.read_status(ws / "runs" / "d")
    assert status["state"] == "failed" and "out of memory" in status["message"]
    assert "another rank failed or left" in done.stderr, done.stderr[-3000:]
    # Each rank says one line; the only traceback is torchrun's own report of the failed job.
    assert "core/training/" not in done.stderr and "ddpm_tui/" not in done.stderr, done.stderr[-3000:]


RANK1_BLIND = """
import os, sys
from pathlib import Path
import core.training.runs as runs
if os.environ.get("RANK") == "1":  # this rank's disk has no run folder (no shared disk)
    runs.checkpoints_dir = lambda run_dir: Path("/nonexistent-ddpm-tui") / "checkpoints"
from ddpm_tui.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ddp_a_rank_that_cannot_see_the_checkpoint_fails_loudly(ws: Path, tmp_path: Path):
    assert cli(ws, "train", "--run", "d", *TINY, "--epochs", "1", "--samples", "0", "--quiet") == 0
    script = tmp_path / "rank1_blind.py"
    script.write_text(RANK1_BLIND)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "--workspace", str(ws), "train", "--run-name", "d", "--epochs", "2", "--device", "cpu", "--quiet"]
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert "rank 1 cannot see" in done.stderr and "shared disk" in done.stderr, done.stderr[-3000:]
    assert "core/training/" not in done.stderr, done.stderr[-3000:]
    assert runs.read_status(ws / "runs" / "d")["step"] == 4  # nothing trained from step 0
    assert load_checkpoint(ws / "runs" / "d" / "checkpoints" / "last.pt")["step"] == 4


# -- issue 24: refusals said once, figures never cut, the CPU start, ETA and settling ----------


def test_a_recipe_on_an_existing_run_is_refused_and_changes_nothing(ws: Path, capsys):
    assert cli(ws, "train", "--run", "r", *TINY, "--max-steps", "2", "--samples", "0", "--quiet") == 0
    config = (ws / "runs" / "r" / "config.json").read_text()
    assert cli(ws, "train", "--run", "r", "--recipe", "seed", "--max-steps", "4", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "run 'r' started with recipe fast" in err and "prediction v -> eps" in err
    assert (ws / "runs" / "r" / "config.json").read_text() == config


def test_a_refused_resume_keeps_the_runs_state_and_says_it_once(ws: Path, tmp_path: Path, capsys):
    assert cli(ws, "train", "--run", "r", *TINY, "--max-steps", "2", "--samples", "0", "--quiet") == 0
    status = (ws / "runs" / "r" / "status.json").read_text()
    unreadable = tmp_path / "unreadable" / "beagle"
    unreadable.mkdir(parents=True)
    (unreadable / "a.png").write_text("not an image")
    for quiet in ([], ["--quiet"]):
        assert cli(ws, "train", "--run", "r", "--data", str(unreadable.parent), "--max-steps", "4", *quiet) == 2
        out, err = capsys.readouterr()
        assert (out + err).count("could be read") == 1, (out, err)
        assert (ws / "runs" / "r" / "status.json").read_text() == status  # still finished
        assert cli(ws, "runs", "--json") == 0
        assert json.loads(capsys.readouterr().out)[0]["state"] == "finished"


def test_a_config_json_value_of_the_wrong_type_is_named(ws: Path, capsys):
    assert cli(ws, "train", "--run", "r", *TINY, "--max-steps", "1", "--samples", "0", "--quiet") == 0
    path = ws / "runs" / "r" / "config.json"
    for value in (123, None):
        path.write_text(json.dumps({**json.loads(path.read_text()), "data": value}))
        assert cli(ws, "train", "--run", "r", "--max-steps", "2", "--quiet") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "config.json: data must be text" in err and "Traceback" not in err, err


@pytest.mark.parametrize("gpu", [False, True])
def test_without_a_gpu_a_new_run_starts_from_the_forms_cpu_default(ws: Path, monkeypatch, capsys, gpu: bool):
    from core.training import options
    from ddpm_tui.cli import build_parser
    from ddpm_tui.commands.train import build_config
    from ddpm_tui.screens.newrun import form_defaults
    from ddpm_tui.workspace import Workspace

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    workspace = Workspace(ws)
    config = build_config(build_parser().parse_args(["train", "--run", "n"]), workspace, ws / "runs" / "n")
    expected = form_defaults(gpu)
    assert (config.preset, config.image_size, config.max_time, config.lr) == (
        expected["preset"], expected["image_size"], expected["max_time"], expected["lr"])
    assert config.lr == (2e-4 if gpu else 1e-3)  # the CPU start's measured lr, the recipe's on a GPU
    out = capsys.readouterr().out
    assert ("res-small" in out and out.count("\n") == 1) if not gpu else out == ""
    assert config.preset == ("classic" if gpu else options.CPU_NEW_RUN["preset"])
    # Named on the command line, the network is the user's.
    config = build_config(build_parser().parse_args(["train", "--run", "n", "--preset", "tiny"]), workspace,
                          ws / "runs" / "n")
    assert (config.preset, config.image_size, config.max_time) == ("tiny", 64, 0.0)
    # The CPU lr was measured for the fast recipe only; another recipe, or --lr, keeps its own.
    if not gpu:
        for argv, lr in ((["--recipe", "classic"], 3e-4), (["--lr", "5e-4"], 5e-4)):
            config = build_config(build_parser().parse_args(["train", "--run", "n", *argv]), workspace,
                                  ws / "runs" / "n")
            assert (config.preset, config.lr) == ("res-small", lr), argv


def test_runs_at_80_columns_never_cuts_a_figure_or_a_state(ws: Path, monkeypatch, capsys):
    for name, state, step in (("run-0412-153012", "stopped", 1390), ("a-long-name-cosine", "running", 123456)):
        runs.write_config(ws / "runs" / name, {"preset": "res-small"})
        runs.write_status(ws / "runs" / name, state=state, step=step, epoch=12, last_loss=0.0345, pid=os.getpid(),
                          message="time budget reached")
    monkeypatch.setenv("COLUMNS", "80")
    assert cli(ws, "runs") == 0
    table = capsys.readouterr().out
    cells = table.split()
    assert max(len(line) for line in table.splitlines()) <= 80
    for figure in ("1390", "123456", "stopped", "running", "0.0345"):
        assert figure in cells, (figure, table)


def test_the_cli_and_the_studio_say_settling_after_a_resume_and_count_max_time(ws: Path):
    from ddpm_tui.commands.train import _Display
    from ddpm_tui.screens.train import Throughput

    speed = Throughput()
    before = [{"step": 10 * i, "elapsed_s": float(i), "images_per_s": 4.9, "session_window": i} for i in range(1, 9)]
    speed.add(before)
    assert not speed.settling and speed.images_per_s == 4.9
    speed.add([{"step": 90, "elapsed_s": 10.0, "images_per_s": 40.0, "session_window": 1}])  # resumed
    assert speed.settling and speed.images_per_s == 40.0
    speed.add([{"step": 100, "elapsed_s": 11.0, "images_per_s": 40.0, "session_window": 2}])
    assert speed.eta(100, 10**9) > 3600  # steps: days away
    assert speed.eta(100, 10**9, time.time() + 120) <= 120  # --max-time stops it in two minutes

    display = _Display("r", quiet=False, logger_name="test-settling")
    with display:
        event = {"event": "step", "step": 90, "epoch": 1.0, "epochs": 5, "loss": 0.1, "images_per_s": 40.0,
                 "total_steps": 1000, "eta_s": 60.0, "session_window": 1}
        display.update(event)
        info = display.progress.tasks[display.task].fields
        assert "settling" in info["info"] and "settling" in info["eta"]
        display.update({**event, "session_window": events_settled()})
        assert "settling" not in display.progress.tasks[display.task].fields["info"]


def events_settled() -> int:
    from core.training.events import SETTLING_WINDOWS

    return SETTLING_WINDOWS
