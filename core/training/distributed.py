"""Several processes under torchrun (DDP): which GPU a rank uses, and the few collectives the
trainer needs; every one is a no-op in a single process."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from core.diffusion.device import resolve_device
from core.training.config import LOGGER_NAME

# How long a rank waits for the others in one collective. Rank 0 alone decodes the dataset
# (minutes for a big one) while the others wait at a barrier, so this is not short; a rank
# that fails tells the others by exiting (see Dist.close), which ends their wait at once.
DIST_TIMEOUT = timedelta(minutes=30)


def pick_rank_device(device: torch.device, local_rank: int) -> torch.device:
    """This process's GPU under torchrun: cuda:LOCAL_RANK when this process sees that many
    GPUs, else the one it was given (e.g. each process sees one GPU through
    CUDA_VISIBLE_DEVICES, so LOCAL_RANK 3 must still use cuda:0)."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if count > local_rank:
        return torch.device("cuda", local_rank)
    return torch.device("cuda", device.index if device.index is not None and device.index < count else 0)


class Dist:
    """World size, rank and the few collectives the loop needs (no-ops in one process)."""

    def __init__(self, device_spec: str) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.owns_group = False
        if self.world_size <= 1:
            self.world_size, self.rank = 1, 0
            self.device = resolve_device(device_spec)
            return
        self.device = pick_rank_device(resolve_device(device_spec), self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            kwargs: dict[str, Any] = {"timeout": DIST_TIMEOUT}
            if self.device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
                kwargs["device_id"] = self.device  # binds NCCL to this GPU at once
            dist.init_process_group(backend=backend, init_method="env://", **kwargs)
            self.owns_group = True

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) a tensor on this rank's device without waiting on the host."""
        if self.enabled:
            if dist.get_backend() == "nccl":
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
            else:  # gloo reduces CPU tensors
                cpu = t.cpu()
                dist.all_reduce(cpu, op=dist.ReduceOp.SUM)
                t = cpu.to(t.device)
        return t

    def close(self, failed: bool = False) -> None:
        if not (self.owns_group and dist.is_initialized()):
            return
        if failed:
            # A rank that fails does not wait for the others (they are in some other
            # collective): it leaves, and its closed connections end their wait at once
            # instead of after the collective's timeout.
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            return
        # Tear down together: a rank that destroys its gloo pairs while a peer is still
        # finishing (rank 0 writes the status) can make the peer abort in C++.
        try:
            dist.barrier()
        except RuntimeError as exc:  # a peer already gone; nothing left to wait for
            logging.getLogger(LOGGER_NAME).warning("ranks did not meet before shutdown: %s", exc)
        dist.destroy_process_group()




def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def is_peer_gone(exc: BaseException) -> bool:
    """Whether a collective failed because another rank failed or left."""
    text = str(exc).lower()
    return any(k in text for k in ("connection closed", "connection reset", "broken pipe", "peer", "gloo",
                                   "nccl", "timed out", "abort"))
