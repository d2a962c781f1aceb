"""The first call of the regularized phase's compiled code (Numba: the latent step's solver, the dense
CRF's lattice), made early: a background thread runs each configuration's loss once on a tiny batch
while the pCE phase trains, so that the regularized phase starts on compiled code. With Numba's disk
cache filled this only loads it; with the cache empty (a fresh install) it moves the compilation, about
20 s on 2 cores, off the critical path. The compiler releases the GIL for LLVM's passes and torch for
its kernels, so the two overlap.

The thread is joined before the run returns (and before the process can exit): a daemon thread that
comes back from compiled code while the interpreter shuts down is killed there, which can abort the
process ("terminate called without an active exception", as gloo's worker thread did under torchrun,
see :func:`admsolve.training.distributed._wait_until_let_go`)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from .._validation import UNLABELED
from .config import TrainConfig
from .objective import Objective

#: Side of the tiny batch's images, labels of its logits.
SIZE, LABELS = 12, 3


@contextlib.contextmanager
def compiling_in_background(configs: Iterable[TrainConfig]) -> Iterator[Compiler | None]:
    """For the body of the ``with``, a thread computes the regularized loss of each of `configs` (those
    with a regularized phase and a regularizer, on the CPU) once on a tiny batch, with and without crop
    padding. Yields the thread, or None when no configuration needs it. On leaving, the thread is asked
    to stop after the loss it is computing and is joined.

    Nothing of a run depends on it: it draws from no global random generator, and a failure is left for
    the run itself to meet and report (the same code runs in its first regularized step)."""
    needed = []
    for config in configs:
        on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
        config = dataclasses.replace(config.resolved(), workers=1)
        if on_cpu and config.epochs > 0 and config.regularizer != "none" and config not in needed:
            needed.append(config)
    if not needed:
        yield None
        return
    thread = Compiler(needed)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop.set()
        thread.join()


class Compiler(threading.Thread):
    """The thread of :func:`compiling_in_background`; ``error`` holds what stopped it, if anything (the
    run meets it again in its first regularized step, and reports it there); setting ``stop`` ends it
    after the loss it is computing."""

    def __init__(self, configs: list[TrainConfig]) -> None:
        super().__init__(name="admsolve-warmup")
        self.configs = configs
        self.error: Exception | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            _compile(self.configs, self.stop)
        except Exception as exc:  # noqa: BLE001 (see the class's docstring)
            self.error = exc


def _compile(configs, stop):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    logits = torch.from_numpy(rng.normal(size=(2, LABELS, SIZE, SIZE)).astype(np.float32))
    scribbles = torch.full((2, SIZE, SIZE), UNLABELED, dtype=torch.int64)
    for label in range(LABELS):
        scribbles[:, 2 + 3 * label, 2:6] = label
    padded = torch.ones((2, SIZE, SIZE), dtype=torch.bool)
    padded[:, :, SIZE - 3:] = False
    for config in configs:
        objective = Objective(config)
        objective.begin_epoch(1)
        for valid in (None, padded):
            if stop.is_set():
                return
            objective("regularized", logits.clone().requires_grad_(), images, scribbles, valid)["loss"].backward()
