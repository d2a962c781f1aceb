"""Training under ``torchrun`` (torch.distributed): which process this is, and the sums across
processes that make a distributed run compute what one process with the same global batch computes.

Under ``torchrun --nproc_per_node N -m admsolve train ...`` every process trains a
DistributedDataParallel copy of the network on its share of each batch (gloo on CPUs, NCCL on
GPUs), runs ADM's latent step for its own images with solver threads sized to its share of the
cores, evaluates its share of the images (confusion matrices and losses summed across processes),
and only rank 0 writes the run folder.
"""

from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class Processes:
    """Where this process stands in the run.

    Attributes
    ----------
    rank, world_size : int
    local_world_size : int
        Processes on this machine (they share its cores).
    device : torch.device
    """

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Whether this process writes the run folder."""
        return self.rank == 0

    @property
    def solver_threads(self) -> int:
        """This process's share of the machine's cores, for the latent step's solvers and the dense loss."""
        return max(1, (os.cpu_count() or 1) // self.local_world_size)

    @overload
    def sum(self, values: float) -> float: ...
    @overload
    def sum(self, values: np.ndarray) -> np.ndarray: ...
    @overload
    def sum(self, values: ArrayLike) -> Any: ...
    def sum(self, values: ArrayLike) -> Any:
        """The element-wise sum over the processes of a float or array (itself in one process)."""
        if self.world_size == 1:
            return values
        tensor = torch.as_tensor(np.asarray(values, dtype=np.float64), device=self._reduce_device())
        dist.all_reduce(tensor)
        result = tensor.cpu().numpy().astype(np.asarray(values).dtype)  # a copy: nothing of `tensor` kept
        if dist.get_backend() == "gloo":
            reduced = weakref.ref(tensor)
            del tensor
            _wait_until_let_go(reduced)
        return float(result) if np.ndim(values) == 0 else result

    def barrier(self) -> None:
        """Wait until every process has got here (nothing to wait for in one process)."""
        if self.world_size > 1:
            dist.barrier()

    def _reduce_device(self):
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


#: Seconds :meth:`Processes.sum` waits at most for gloo's worker thread to let go of a reduced tensor.
LET_GO_TIMEOUT = 1.0


def _wait_until_let_go(reduced: weakref.ref[torch.Tensor]) -> None:
    """Wait until the tensor of the weak reference `reduced`, which Python no longer holds, is let go of
    by gloo's worker thread too (at most :data:`LET_GO_TIMEOUT` seconds).

    The worker lets go of a reduction's tensors after the reduction has returned to Python, and letting
    go of a tensor Python has seen takes the GIL. If that happens once the interpreter is shutting down,
    the thread is killed in C++ code and the process aborts ("terminate called without an active
    exception": seen under torchrun at a run's end, right after its last reduction). Torch keeps the
    Python object alive while C++ holds the tensor, so its weak reference dies when the worker lets go;
    sleeping hands the worker the GIL meanwhile."""
    deadline = time.monotonic() + LET_GO_TIMEOUT
    while reduced() is not None and time.monotonic() < deadline:
        time.sleep(1e-4)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device of ``TrainConfig.device``: "auto" (CUDA when present), "cpu", "cuda" or
    "cuda:N" ("cuda" is GPU `local_rank` under torchrun); a ValueError for another name or for CUDA
    where torch finds none."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"device: {name!r} was asked for, but torch {torch.__version__} ({build}) finds no "
                             f"CUDA device; use --device cpu or auto")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device: {name!r} was asked for, but torch finds {torch.cuda.device_count()} CUDA "
                             f"device(s)")
    return device


def start(device_name: str) -> Processes:
    """This process's place: from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK,
    LOCAL_WORLD_SIZE), starting the process group on first use; one process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size == 1:
        return Processes(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank=dist.get_rank(), world_size=dist.get_world_size(),
                     local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))), device=device)
