"""The Sample screen's drawing worker: core.diffusion.sampling.generate run in a child process.

Why a process: a process that goes on running cannot give back a CUDA context (a few hundred
MB on each GPU it touched) and gives back a model's memory only to its own allocator cache.
A child that ends gives back all of it. The Sample screen keeps the child, and the model it
loaded, while the screen is shown (drawing again is quick) and ends it when the user leaves
the screen, so an idle worker does not sit next to a training run on the same GPU for the
studio's life. The price is a start-up (importing torch, loading the checkpoint: seconds) at
the first draw after entering the screen.

The child is ``python -m ddpm_tui.draw_worker FD`` (a fresh interpreter: a forked copy of the
studio would hold its threads' locks, and multiprocessing's spawn re-runs whatever script
started the studio); it talks over a socket pair with multiprocessing's Connection:

    studio -> child: ("job", dict), ("cancel",), ("preview", x0: bool), ("quit",)
    child -> studio: ("progress", done, total, preview), ("done", images, seconds, weights, device),
                     ("failed", message)

``DrawProcess.run`` adds ("cancelling", next_step, seconds) while a cancelled child has not
answered: "terminate" or "kill" comes in that many seconds (a hung child is ended, never
waited for).

``images`` and ``preview`` are uint8 arrays (B, H, W, 3). Its output goes to a log file, never
to the terminal the studio draws on.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Iterator

PREVIEW_INTERVAL = 0.25  # seconds between previews (<= 4 Hz): a fast sampler must not flood SSH
JOIN_TIMEOUT = 10.0  # seconds a quitting child gets before it is terminated
# A cancelled draw that does not answer (a hung or stopped child) is ended in steps the
# screen counts down: CANCEL_GRACE to stop by itself, then SIGTERM, then SIGKILL after KILL_GRACE.
CANCEL_GRACE = 3.0
KILL_GRACE = 2.0


class _Escalation:
    """Ends an unanswering child step by step; ``step`` says what comes next and when."""

    def __init__(self, proc: subprocess.Popen, grace: float) -> None:
        self.proc, self.grace, self.start, self.terminated = proc, grace, time.monotonic(), False

    def step(self) -> tuple[str, int]:
        """("terminate" | "kill", whole seconds left) - acting on the child when the time comes."""
        elapsed = time.monotonic() - self.start
        if elapsed >= self.grace and not self.terminated:
            self.terminated = True
            _signal(self.proc, signal.SIGTERM)
            _signal(self.proc, signal.SIGCONT)  # a stopped child acts on SIGTERM only once continued
        if elapsed >= self.grace + KILL_GRACE:
            _signal(self.proc, signal.SIGKILL)
            return ("kill", 0)
        if elapsed < self.grace:
            return ("terminate", math.ceil(self.grace - elapsed))
        return ("kill", math.ceil(self.grace + KILL_GRACE - elapsed))


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except OSError:  # it ended meanwhile
            pass


class DrawProcess:
    """One child process at a time; ``run`` from one thread, the rest from any."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.log_path = log_path
        self._proc = None
        self._conn = None
        self._send_lock = threading.Lock()
        # one job at a time: a cancelled worker may still be reading the child's last answers
        # when the next job starts, and two readers of one pipe would mix their messages
        self._run_lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        log = subprocess.DEVNULL
        if self.log_path is not None:
            try:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                log = open(self.log_path, "ab")
            except OSError:
                log = subprocess.DEVNULL
        env = dict(os.environ)
        # CUDA numbers GPUs as NVML and the system monitor do (unless the user chose otherwise)
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        try:
            # its output goes to the log: the terminal is the studio's
            self._proc = subprocess.Popen([sys.executable, "-m", "ddpm_tui.draw_worker", str(theirs.fileno())],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          pass_fds=(theirs.fileno(),), env=env)
        finally:
            theirs.close()
            if log is not subprocess.DEVNULL:
                log.close()
        self._conn = Connection(ours.detach())

    def _send(self, *message: object) -> None:
        with self._send_lock:
            if self._conn is None:
                return
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the child is gone; run() reports it
                pass

    def run(self, job: dict, cancelled: Callable[[], bool]) -> Iterator[tuple]:
        """Start the child if needed, send it ``job`` and yield its messages up to and
        including the final ("done", …) or ("failed", …). ``cancelled()`` is asked every
        0.1 s; when true the child is told to stop (it answers ("failed", "cancelled"))."""
        with self._run_lock:
            yield from self._run(job, cancelled)

    def _run(self, job: dict, cancelled: Callable[[], bool]) -> Iterator[tuple]:
        if not self.running:
            self.close()
            self._start()
        conn, proc = self._conn, self._proc
        self._send("job", job)
        stopping: _Escalation | None = None
        notice = None
        while True:
            if stopping is None and (cancelled() or self._proc is not proc):
                self._send("cancel")
                # closed (the studio quits or leaves the screen): no time for a polite answer
                stopping = _Escalation(proc, CANCEL_GRACE if self._proc is proc else 0.0)
            step = stopping.step() if stopping is not None else None
            if step != notice:  # said once a second: the screen counts down
                notice = step
                yield ("cancelling", *step)
            try:
                if not conn.poll(0.1):
                    if proc.poll() is not None and not conn.poll(0):
                        raise EOFError
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                try:
                    code = proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    code = None
                where = f"; see {self.log_path}" if self.log_path else ""
                yield ("failed", "cancelled" if stopping is not None
                       else f"the sampling process ended (exit code {code}){where}")
                if self._proc is proc:
                    self.close()
                return
            yield message
            if message[0] in ("done", "failed"):
                return

    def set_preview(self, x0: bool) -> None:
        if self.running:
            self._send("preview", bool(x0))

    def close(self) -> None:
        """Tell the child to quit and forget it; a thread waits for it to end (terminating
        it after JOIN_TIMEOUT), so the caller's event loop never waits."""
        proc, conn = self._proc, self._conn
        if proc is None:
            return
        self._send("quit")
        self._proc = self._conn = None

        def reap() -> None:
            for stop in (None, signal.SIGTERM, signal.SIGKILL):
                if stop is not None:
                    _signal(proc, stop)
                    _signal(proc, signal.SIGCONT)  # a stopped child acts on SIGTERM only once continued
                try:
                    proc.wait(JOIN_TIMEOUT)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if conn is not None:
                conn.close()

        threading.Thread(target=reap, name="draw worker reaper", daemon=True).start()


# -- the child ------------------------------------------------------------------------------


class _Child:
    def __init__(self, conn) -> None:
        self.conn = conn
        self.cache: tuple | None = None  # (key, Sampleable): drawing again skips the load
        self.preview_x0 = False
        self.cancelled = False
        self.quit = False

    def drain(self) -> None:
        """Take the messages that arrived while drawing (cancel, preview, quit)."""
        while self.conn.poll():
            message = self.conn.recv()
            if message[0] == "preview":
                self.preview_x0 = bool(message[1])
            elif message[0] in ("cancel", "quit"):
                self.cancelled = True
                self.quit = self.quit or message[0] == "quit"

    def load(self, path: Path, weights: str, device: str, ema_length: float | None = None):
        from core.diffusion.sampling import load_for_sampling

        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size, weights, ema_length, device)
        if self.cache is None or self.cache[0] != key:
            self.cache = None  # the old model goes before the new one loads: never two at once
            _empty_device_cache()
            self.cache = (key, load_for_sampling(path, weights, ema_length))
        return self.cache[1]

    def job(self, job: dict) -> None:
        from core.diffusion.checkpoint import CheckpointError
        from core.diffusion.device import resolve_device
        from core.io.grid import to_uint8_images
        from core.diffusion.sampling import SampleRequest, SamplingError, generate

        send = self.conn.send
        self.cancelled = False
        self.preview_x0 = bool(job.get("preview_x0"))
        try:
            request = SampleRequest(**job["options"])
            device = resolve_device(job.get("device") or "auto")
        except ValueError as exc:
            send(("failed", str(exc)))
            return
        path = Path(job["checkpoint"])
        try:
            loaded = self.load(path, request.weights, str(device), request.ema_length)
        except (CheckpointError, OSError) as exc:
            send(("failed", f"cannot load {path}: {exc}"))
            return
        import numpy as np

        start = time.monotonic()
        last_draw = 0.0
        parts = []
        try:
            for step in generate(loaded, request, device=device):
                self.drain()
                if self.cancelled:
                    send(("failed", "cancelled"))
                    return
                if step.images is not None:
                    parts.append(step.images.numpy())
                now = time.monotonic()
                done = step.batch * step.total + step.index + 1
                total = step.total * step.batches
                if now - last_draw >= PREVIEW_INTERVAL or done == total:
                    last_draw = now
                    shown = step.x0_pred if self.preview_x0 else step.x_t
                    send(("progress", done, total, to_uint8_images(shown).numpy()))
        except (SamplingError, ValueError, RuntimeError) as exc:
            send(("failed", f"sampling failed: {exc}"))
            return
        if not parts:
            send(("failed", "the sampler produced no steps"))
            return
        send(("done", np.concatenate(parts), time.monotonic() - start, loaded.weights_note, str(device)))


def _empty_device_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def serve(conn: Connection) -> None:
    """The child's main loop: one job at a time until "quit" or the studio goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the terminal is the studio's
    child = _Child(conn)
    while not child.quit:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "quit":
            return
        if message[0] == "preview":
            child.preview_x0 = bool(message[1])
        elif message[0] == "job":
            try:
                child.job(message[1])
            except (EOFError, OSError):
                return  # the studio went away while we were drawing
            except Exception as exc:  # anything else: one line to the studio, and go on
                try:
                    conn.send(("failed", f"sampling failed: {type(exc).__name__}: {exc}"))
                except (OSError, ValueError):
                    return


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
