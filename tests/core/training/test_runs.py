"""core.training.runs: the run directory contract between the trainer and its readers."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

import core.training.runs as runs
from core.training.runs import (
    MetricsWriter,
    dedupe_metrics,
    effective_state,
    is_pid_alive,
    latest_checkpoint,
    latest_samples,
    list_runs,
    read_config,
    read_metrics,
    read_status,
    run_info,
    setup_run_logger,
    write_config,
    write_status,
)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------- config / status


def test_config_round_trip_and_tolerant_reads(tmp_path):
    run = tmp_path / "r1"
    write_config(run, {"preset": "tiny", "data": tmp_path / "dogs", "classes": ("a", "b")})
    assert read_config(run) == {"preset": "tiny", "data": str(tmp_path / "dogs"), "classes": ["a", "b"]}
    assert read_config(tmp_path / "nothing") is None
    (run / "config.json").write_text('{"preset": "ti')  # garbled by hand
    assert read_config(run) is None
    (run / "config.json").write_text("[1, 2]")  # not an object
    assert read_config(run) is None


def test_write_status_merges_records_the_process_and_validates(tmp_path):
    run = tmp_path / "r"
    s1 = write_status(run, state="running", step=0, epoch=0)
    assert s1["pid"] == os.getpid() and s1["host"] == socket.gethostname()
    assert abs(s1["pid_started"] - psutil.Process().create_time()) < 1
    s2 = write_status(run, step=10, loss=float("nan"))
    assert s2["state"] == "running" and s2["step"] == 10 and s2["updated_at"] >= s1["updated_at"]
    on_disk = read_status(run)
    assert on_disk["step"] == 10 and on_disk["loss"] is None  # NaN stored as null: valid JSON
    json.loads((run / "status.json").read_text())
    with pytest.raises(ValueError, match="paused"):
        write_status(run, state="paused")
    assert read_status(run)["state"] == "running"


def test_status_replace_is_atomic(tmp_path, monkeypatch):
    run = tmp_path / "r"
    write_status(run, state="running", step=1)
    before = (run / "status.json").read_bytes()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.os, "replace", boom)
    with pytest.raises(OSError, match="No space"):
        write_status(run, step=2)
    assert (run / "status.json").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["status.json"]  # no temp file left


def test_status_on_a_full_disk_keeps_the_old_file(small_disk):
    disk = small_disk("64k")
    write_status(disk, state="running", step=1)
    before = (disk / "status.json").read_bytes()
    (disk / "filler").write_bytes(b"\0" * 60_000)  # fill the rest (tmpfs pages: 4k)
    with pytest.raises(OSError):
        write_status(disk, message="x" * 20_000)
    assert (disk / "status.json").read_bytes() == before
    assert not [p for p in disk.iterdir() if p.name.endswith(".tmp")]


def test_read_status_tolerates_missing_and_garbled(tmp_path):
    assert read_status(tmp_path) is None
    (tmp_path / "status.json").write_text("{not json")
    assert read_status(tmp_path) is None
    assert effective_state(None) == "unknown"
    assert effective_state({"state": "weird"}) == "unknown"


# ---------------------------------------------------------------------------- liveness


def test_died_when_pid_is_gone(tmp_path):
    pid = dead_pid()
    assert not is_pid_alive(pid)
    write_status(tmp_path, state="running", pid=pid, host=socket.gethostname(), step=5)
    assert effective_state(read_status(tmp_path)) == "died"
    info = run_info(tmp_path)
    assert info.state == "died" and info.alive is False and info.pid == pid

    # A finished run whose process is long gone is simply finished.
    write_status(tmp_path, state="finished")
    assert effective_state(read_status(tmp_path)) == "finished"
    assert run_info(tmp_path).alive is None


def test_running_when_pid_alive_and_unknown_on_another_host(tmp_path):
    write_status(tmp_path, state="running")
    assert effective_state(read_status(tmp_path)) == "running"
    assert run_info(tmp_path).alive is True

    other = tmp_path / "other"
    write_status(other, state="running", pid=dead_pid(), host=socket.gethostname() + "-elsewhere")
    assert effective_state(read_status(other)) == "running"  # cannot check another machine
    assert run_info(other).alive is None


def test_a_zombie_or_a_reused_pid_counts_as_died(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # never waited for: becomes a zombie
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.02)
        write_status(tmp_path, state="running", pid=proc.pid, host=socket.gethostname())
        assert effective_state(read_status(tmp_path)) == "died"
    finally:
        proc.wait()
    # Our own pid, but recorded with another start time: the pid was reused.
    write_status(tmp_path, state="running", pid=os.getpid(), host=socket.gethostname(),
                 pid_started=psutil.Process().create_time() - 3600)
    assert effective_state(read_status(tmp_path)) == "died"


# ---------------------------------------------------------------------------- metrics


def test_metrics_append_and_incremental_read(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.append({"step": 1, "loss": 0.9})
        records, offset = read_metrics(tmp_path)
        assert [r["step"] for r in records] == [1] and "time" in records[0]
        w.append({"step": 2, "loss": math.inf})
        w.append({"step": 3, "loss": 0.7})
        more, offset2 = read_metrics(tmp_path, offset)
    assert [r["step"] for r in more] == [2, 3] and more[0]["loss"] is None
    assert offset2 == (tmp_path / "metrics.jsonl").stat().st_size
    assert read_metrics(tmp_path, offset2) == ([], offset2)
    assert read_metrics(tmp_path / "missing") == ([], 0)


def test_half_written_last_line_waits_for_its_newline(tmp_path):
    with MetricsWriter(tmp_path) as w:
        w.append({"step": 1, "loss": 1.0})
    path = tmp_path / "metrics.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"step": 2, "lo')
    records, offset = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1]
    with open(path, "ab") as fh:
        fh.write(b'ss": 0.5}\n')
    records, offset = read_metrics(tmp_path, offset)
    assert records == [{"step": 2, "loss": 0.5}]


def test_a_writer_killed_mid_line_does_not_corrupt_later_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 1.0}\n{"step": 2, "lo')  # kill -9 mid-line
    with MetricsWriter(tmp_path) as w:  # the resumed trainer
        w.append({"step": 2, "loss": 0.8})
    records, _ = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.8)]
    assert runs.last_metrics(tmp_path)["loss"] == 0.8


def test_a_replaced_metrics_file_is_read_from_the_start(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    _, offset = read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 9}\n')
    assert read_metrics(tmp_path, offset)[0] == [{"step": 9}]


def test_dedupe_metrics_drops_steps_replayed_after_a_resume():
    recs = [{"step": s} for s in (1, 2, 3, 4)] + [{"step": s, "r": 1} for s in (3, 4, 5)] + [{"event": "x"}]
    out = dedupe_metrics(recs)
    assert [r.get("step") for r in out] == [1, 2, 3, 4, 5, None]
    assert out[2] == {"step": 3, "r": 1}


# ---------------------------------------------------------------------------- listing


def _run(root, name, **status):
    d = root / name
    write_config(d, {"name": name})
    if status:
        write_status(d, **status)
    return d


def test_list_runs_newest_first_and_tolerant(tmp_path):
    assert list_runs(tmp_path / "missing") == []
    old = _run(tmp_path, "old", state="finished", step=100, loss=0.1, pid=1, host="h")
    time.sleep(0.01)
    mid = _run(tmp_path, "mid", state="running", pid=dead_pid(), host=socket.gethostname(), step=7)
    time.sleep(0.01)
    new = _run(tmp_path, "new", state="running", step=3)
    bare = tmp_path / "bare"  # a folder a crashed trainer made before writing anything
    bare.mkdir()
    os.utime(bare, (1, 1))
    (tmp_path / "stray.txt").write_text("x")  # not a run
    (tmp_path / ".hidden").mkdir()
    with MetricsWriter(mid) as w:
        w.append({"step": 7, "epoch": 2, "loss": 0.42})

    infos = list_runs(tmp_path)
    assert [i.name for i in infos] == ["new", "mid", "old", "bare"]
    by = {i.name: i for i in infos}
    assert by["new"].state == "running" and by["new"].alive is True
    assert by["mid"].state == "died" and by["mid"].last_loss == 0.42 and by["mid"].epoch == 2
    assert by["old"].state == "finished" and by["old"].last_loss == 0.1 and by["old"].step == 100
    assert by["bare"].state == "unknown" and by["bare"].config == {} and by["bare"].step is None
    assert by["new"].config == {"name": "new"} and by["new"].path == new and by["old"].path == old


def test_latest_checkpoint_and_samples(tmp_path):
    assert latest_checkpoint(tmp_path) is None and latest_samples(tmp_path) == []
    ck = runs.checkpoints_dir(tmp_path)
    ck.mkdir()
    (ck / "epoch_0010.pt").write_bytes(b"a")
    (ck / "epoch_0020.pt").write_bytes(b"b")
    os.utime(ck / "epoch_0010.pt", (1000, 1000))
    (ck / ".last.pt.abc.tmp").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == ck / "epoch_0020.pt"  # no last.pt: newest milestone
    (ck / "last.pt").write_bytes(b"c")
    assert latest_checkpoint(tmp_path) == ck / "last.pt"

    sd = runs.samples_dir(tmp_path)
    sd.mkdir()
    for i, name in enumerate(["epoch_0010.png", "ema_epoch_0010.png", "epoch_0020.png", "ema_epoch_0020.png"]):
        (sd / name).write_bytes(b"png")
        os.utime(sd / name, (1000 + 10 * (i // 2), 1000 + 10 * (i // 2)))
    assert [p.name for p in latest_samples(tmp_path)] == [
        "epoch_0020.png", "ema_epoch_0020.png", "epoch_0010.png", "ema_epoch_0010.png"]


def test_run_logger_writes_train_log_once(tmp_path):
    logger = setup_run_logger(tmp_path / "a", name="test_runs.logger")
    logger = setup_run_logger(tmp_path / "b", name="test_runs.logger")  # second call: moves, no duplicate
    logger.info("hello %s", "dogs")
    runs.close_run_logger(logger)
    assert not (tmp_path / "a" / "train.log").read_text()
    lines = (tmp_path / "b" / "train.log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("hello dogs") and "INFO" in lines[0]
    assert not [h for h in logging.getLogger("test_runs.logger").handlers if isinstance(h, logging.FileHandler)]
