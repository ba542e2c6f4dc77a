"""What the trainer tells the world, declared once: its progress events (plain dicts passed to
``train(progress=...)``) and status.json. The trainer writes these shapes; the CLI, the studio
and core/training/runs.py read them. Torch-free, so readers import it without loading torch.

The dicts on the wire and on disk are exactly these TypedDicts (JSON objects); the types only
name the keys so a reader and the writer cannot drift apart.
"""

import sys
from typing import Literal, TypedDict, Union, get_args, get_type_hints

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # Python 3.10 (the project supports it); typing_extensions comes with torch
    from typing_extensions import NotRequired

# ---------------------------------------------------------------------------- run states

RunState = Literal["running", "stopped", "finished", "failed"]
RUN_STATES: tuple[RunState, ...] = get_args(RunState)
RUNNING, STOPPED, FINISHED, FAILED = RUN_STATES


class RunStatus(TypedDict, total=False):
    """status.json, merged field by field by each write (runs.write_status)."""

    state: RunState
    message: str
    step: int
    epoch: int
    pid: int  # the trainer's process (with host and pid_started: "running" means "this process")
    host: str
    pid_started: float | None
    updated_at: float  # Unix seconds, set by every write
    started_at: float
    world_size: int
    device: str
    total_steps: int
    epochs: int
    last_loss: float | None
    images_per_s: float
    eta_s: float | None
    time_budget_ends_at: float | None  # Unix seconds when --max-time stops this session (None: no limit)
    bad_files: int
    compile_s: float
    last_checkpoint_step: int
    nonfinite_skipped: int
    weights_digests: list[str]  # several ranks: each one's sha256 of the final weights (returned, not written)


# ---------------------------------------------------------------------------- speed and ETA

# A session's first metrics lines: the speed they show (and the ETA from it) is still settling
# (warm-up, caches), and after a resume the windows from before the stop say nothing of it.
SETTLING_WINDOWS = 5


def eta_seconds(steps_left: float | None, steps_per_s: float | None, time_left_s: float | None) -> float | None:
    """Seconds until training stops: the earlier of the step/epoch limit at this speed and the
    time budget left (--max-time, per session). None when neither is known. The trainer's
    progress (the CLI) and the studio's Train screen both compute it here."""
    candidates = []
    if steps_left is not None and steps_per_s and steps_per_s > 0:
        candidates.append(max(0.0, steps_left) / steps_per_s)
    if time_left_s is not None:
        candidates.append(max(0.0, time_left_s))
    return min(candidates) if candidates else None


# ---------------------------------------------------------------------------- progress events

EventKind = Literal["loading", "bad_files", "wrote", "compiling", "compiled", "step", "saving", "sampling",
                    "evaluating", "eval"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)
LOADING, BAD_FILES, WROTE, COMPILING, COMPILED, STEP, SAVING, SAMPLING, EVALUATING, EVAL = EVENT_KINDS


class LoadingEvent(TypedDict):
    """Decoding the dataset: ``done`` of ``total`` files."""

    event: Literal["loading"]
    done: int
    total: int
    message: str


class BadFilesEvent(TypedDict):
    """Files the dataset could not read: (path, reason) pairs."""

    event: Literal["bad_files"]
    files: list[tuple[str, str]]


class WroteEvent(TypedDict):
    """An image file written into the run (examples, sample grids)."""

    event: Literal["wrote"]
    path: str


class CompilingEvent(TypedDict):
    event: Literal["compiling"]
    step: int
    what: str  # "first step" or "batch of N"


class CompiledEvent(TypedDict):
    event: Literal["compiled"]
    step: int
    what: str
    seconds: float


class StepEvent(TypedDict):
    """One metrics line (the same fields as metrics.jsonl) plus the run's totals."""

    event: Literal["step"]
    step: int
    epoch: float  # fractional: completed epochs plus the share of this one
    lr: float
    images_per_s: float
    elapsed_s: float
    device_mem_mb: float | None
    skipped: int  # NaN/inf steps in this window
    session_window: int  # 1 for the first line of a session (a start or a resume), 2, 3, ... after it
    loss: NotRequired[float]  # absent when every step of the window was skipped
    total_steps: int
    eta_s: float | None
    epochs: int


class SavingEvent(TypedDict):
    event: Literal["saving"]
    step: int


class SamplingEvent(TypedDict):
    event: Literal["sampling"]
    step: int


class EvaluatingEvent(TypedDict):
    event: Literal["evaluating"]
    step: int


class EvalEvent(TypedDict):
    """The scores of one evaluation (core.quality.evaluate's values)."""

    event: Literal["eval"]
    step: int
    fid: NotRequired[float]
    kid: NotRequired[float]
    kid_std: NotRequired[float]
    precision: NotRequired[float]
    recall: NotRequired[float]
    class_accuracy: NotRequired[float]
    class_entropy: NotRequired[float]
    copy_rate: NotRequired[float]  # share of samples closer to a training image than the rule allows


ProgressEvent = Union[LoadingEvent, BadFilesEvent, WroteEvent, CompilingEvent, CompiledEvent, StepEvent,
                      SavingEvent, SamplingEvent, EvaluatingEvent, EvalEvent]

# Each kind's TypedDict, derived from the union (its ``event`` Literal names the kind).
EVENT_TYPES: dict[str, type] = {get_args(get_type_hints(cls)["event"])[0]: cls for cls in get_args(ProgressEvent)}
