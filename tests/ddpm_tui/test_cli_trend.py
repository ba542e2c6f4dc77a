"""The quality trend where users see it: `eval RUN --trend` (no sampling), the `runs` table and
its JSON, and the Train screen's FID plot title; `sample RUN` still draws from last.pt when a
stop rule kept best.pt beside it."""

from __future__ import annotations

import json
import shutil

from core.quality.eval_log import append_records
from ddpm_tui.cli import main
from ddpm_tui.commands.sample import resolve_source
from ddpm_tui.widgets.fidplot import FidPlot
from studio_helpers import make_checkpoint_run

PLATEAU = [1.0, 0.5, 0.2, 0.203, 0.198, 0.201, 0.2]  # KID; std 0.01: flat since step 200


def _records(values: list[float], std: float = 0.01) -> list[dict]:
    out = []
    for i, v in enumerate(values):
        common = {"step": 100 * i, "sampler": "ddim", "steps": 10, "n": 50, "features": "dataset",
                  "feature_key": "k", "guidance": 1.0, "weights": "ema", "time": 3600.0 * i}
        out += [{**common, "metric": "kid", "value": v, "std": std}, {**common, "metric": "fid", "value": 100 * v}]
    return out


def test_eval_trend_prints_the_verdict_without_sampling(workspace, capsys):
    run_dir = make_checkpoint_run(workspace, "plateau")
    append_records(run_dir, _records(PLATEAU))
    shutil.rmtree(run_dir / "checkpoints")  # nothing to sample from: --trend reads eval.jsonl only
    assert main(["--workspace", str(workspace.root), "eval", "plateau", "--trend"]) == 0
    out = capsys.readouterr().out
    assert "run plateau: flat since step 200 (change within noise over the last 4 evaluations)" in out
    assert "rule: a change is significant beyond 2x the combined noise" in out
    assert main(["--workspace", str(workspace.root), "eval", "plateau", "--trend", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "flat"


def test_runs_shows_the_verdict(workspace, capsys, monkeypatch):
    falling = make_checkpoint_run(workspace, "falling")
    append_records(falling, _records([1.0 - 0.011 * i for i in range(5)]))  # 1.1 std a time
    rising = make_checkpoint_run(workspace, "rising")
    append_records(rising, _records([1.0, 0.5, 0.3, 0.35, 0.4, 0.45]))
    make_checkpoint_run(workspace, "never")
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["--workspace", str(workspace.root), "runs"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "improving" in lines["falling"] and "worse@200" in lines["rising"]
    assert "trend" in lines["run"] and "improving" not in lines["never"]
    assert main(["--workspace", str(workspace.root), "runs", "--json"]) == 0
    listed = {r["name"]: r["trend"] for r in json.loads(capsys.readouterr().out)}
    assert listed["rising"] == {"verdict": "worse", "since_step": 200, "text": "getting worse since step 200"}
    assert listed["falling"]["text"].startswith("improving (−0.011 KID per hour)")
    assert listed["never"]["verdict"] == "too few"


def test_the_fid_plot_title_carries_the_trend():
    plot = FidPlot()
    plot.add_records(_records(PLATEAU[:2]))
    assert plot.verdict == "trend: too few evaluations"
    plot.add_records(_records(PLATEAU)[4:])
    assert plot.verdict == "KID flat since step 200"
    plot.add_records([], reset=True)
    assert plot.verdict == ""


def test_sample_still_draws_from_last_pt_beside_best_pt(workspace):
    run_dir = make_checkpoint_run(workspace, "kept")
    shutil.copy(run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt")
    assert resolve_source("kept", workspace)[0].name == "last.pt"
    assert resolve_source(str(run_dir / "checkpoints" / "best.pt"), workspace)[0].name == "best.pt"
