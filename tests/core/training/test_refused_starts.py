"""Issue 24: a start the trainer refuses leaves the run as it was; the ETA counts --max-time;
the speed settles again after a resume; a recipe on an existing run is refused, not half-applied."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from core.training import events, options, runs
from core.training.train import TrainError, train
from tests.core.training.test_train import make_dataset, tiny

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "dogs")


def test_eta_is_the_earlier_of_the_step_limit_and_the_time_budget():
    assert events.eta_seconds(1000, 1.0, None) == 1000
    assert events.eta_seconds(1000, 1.0, 60.0) == 60.0  # --max-time ends it first
    assert events.eta_seconds(10, 1.0, 60.0) == 10
    assert events.eta_seconds(None, None, 30.0) == 30.0
    assert events.eta_seconds(10, None, None) is None


def test_the_trainers_eta_never_runs_past_max_time(data: Path, tmp_path: Path):
    seen = []
    final = train(tiny(data, epochs=100000, max_time=1.5, save_frequency=100000, samples=0), tmp_path / "r",
                  progress=seen.append)
    assert final["state"] == "stopped"
    etas = [e["eta_s"] for e in seen if e.get("event") == events.STEP and e.get("eta_s") is not None]
    assert etas and max(etas) <= 1.5  # step limit: 100000 epochs, hours away


def test_a_resume_marks_its_first_windows_as_a_new_session(data: Path, tmp_path: Path):
    run = tmp_path / "r"
    assert train(tiny(data, max_steps=3), run)["state"] == "finished"
    assert train(tiny(data, max_steps=6), run)["state"] == "finished"
    records, _ = runs.read_metrics(run)
    assert [r["session_window"] for r in records] == [1, 2, 3, 1, 2, 3]


def test_a_refused_resume_leaves_a_finished_run_finished(data: Path, tmp_path: Path):
    run = tmp_path / "r"
    assert train(tiny(data, max_steps=2), run)["state"] == "finished"
    before = (run / runs.STATUS_FILE).read_text()
    unreadable = tmp_path / "unreadable"
    (unreadable / "beagle").mkdir(parents=True)
    (unreadable / "beagle" / "a.png").write_text("not an image")
    with pytest.raises(TrainError, match="could be read"):
        train(tiny(data=unreadable, max_steps=4), run)
    assert (run / runs.STATUS_FILE).read_text() == before  # not "failed": nothing was trained
    with pytest.raises(TrainError, match="could be read"):  # a new run refused: no folder left
        train(tiny(data=unreadable), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_file_system_without_locks_is_said_and_leaves_no_run(data: Path, tmp_path: Path, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(TrainError) as info:
        train(tiny(data), tmp_path / "runs" / "r")
    assert "does not support file locks" in str(info.value) and "local disk" in str(info.value)
    assert not (tmp_path / "runs" / "r").exists()  # `runs` would list it as "unknown"


def test_a_recipe_on_an_existing_run_is_refused_naming_what_it_would_change():
    saved = options.resolve({"data": "/d", "recipe": "fast"})
    with pytest.raises(options.RecipeChange) as info:
        options.resolve({"recipe": "seed"}, base=saved)  # seed: classic's former name
    text = str(info.value)
    assert "started with recipe fast" in text and "prediction v -> eps" in text and "lr 0.0002 -> 0.0003" in text
    # The same recipe, or the options given themselves, are no change of recipe.
    assert options.resolve({"recipe": "fast", "epochs": 3}, base=saved)["epochs"] == 3
    assert options.resolve({"epochs": 3}, base=saved)["prediction"] == "v"


def test_the_cpu_start_is_declared_once_for_the_form_and_the_cli():
    from ddpm_tui.screens.newrun import form_defaults

    assert form_defaults(False) == options.new_run_defaults(False)
    assert {k: form_defaults(False)[k] for k in options.CPU_NEW_RUN} == options.CPU_NEW_RUN
    assert form_defaults(True)["preset"] == "classic"
