"""One training loop for scribble-supervised segmentation (Algorithm 1 of the paper).

A run has two phases, as in the paper: ``pretrain_epochs`` of partial cross-entropy on the
scribbles, then ``epochs`` of the regularized loss, optimised either by gradient descent on its
relaxation (``optimizer="gd"``, loss (4)) or by ADM (``optimizer="adm"``: per batch, the latent
labeling X of eq. 8 from a discrete solver, then a gradient step on eq. 7).

Every loss is per pixel, so that ``lam`` and ``gamma`` mean the same for any image size and for both
optimizers: the partial cross-entropy is the mean over the batch's scribbled pixels, and the
regularizer (GD) or the proximal term (ADM) is summed over an image's pixels and divided by its
pixel count, then averaged over the batch. GD minimises ``pCE + lam R(S) / |Omega|``; ADM alternates
``min_X lam R(X) + gamma KL(X || S)`` (both sums over pixels, as in eq. 8) with
``pCE + gamma sum_{unscribbled} CE(S, X) / |Omega|``.

The run folder holds ``config.json``, ``checkpoint.pt`` (written atomically after every epoch; only
tensors, numbers, strings and plain containers, read with ``weights_only=True``, holding the metric
records and the random states too), ``metrics.jsonl`` (one JSON object per epoch, rewritten from the
checkpoint on resume), ``curves.png`` (losses and mIoU against iterations,
Fig. 3) and ``predictions.png`` (image / scribbles / prediction / ground truth, Fig. 5).
Randomness (crops, flips, scaling, batch order) is drawn from generators seeded by (seed, epoch,
image), and the global torch / NumPy states (dropout) are restored from the checkpoint, so ``resume``
continues a stopped run exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import math
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from .._files import LOCK_FILE
from ..data import open_dataset
from .batches import TrainingBatches
from .checkpoints import (BEST_CHECKPOINT, StepLog, atomic_save, check_model_state, load_checkpoint, load_model_state,
                          lock_folder, read_config, read_metrics, rng_state, set_rng_state, write_config,
                          write_model_info, write_records)
from .config import TrainConfig
from .distributed import start
from .evaluation import Evaluator, image_tensor
from .metrics import plot_curves
from .models import build_model, input_normalization, wrap_model
from .objective import Objective
from .warmup import compiling_in_background

__all__ = ["NO_VALIDATION", "Progress", "Trainer", "TrainingDiverged", "read_metrics", "resume", "train"]

#: The validation split that means none: the run trains without evaluation.
NO_VALIDATION = "none"


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or infinite; the state before that step was saved."""


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, else one line per epoch)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()

    def update(self, epoch: int, total_epochs: int, step: int, steps: int, text: str) -> None:
        if self.live:
            filled = int(20 * step / max(steps, 1))
            self.stream.write(f"\repoch {epoch}/{total_epochs} [{'#' * filled}{'.' * (20 - filled)}] "
                              f"{step}/{steps} {text}   ")
            self.stream.flush()

    def done(self, line: str) -> None:
        if self.enabled:
            self.stream.write(("\r" + line + " " * 10 if self.live else line) + "\n")
            self.stream.flush()


class Trainer:
    """One run: its parts (data, network, objective, evaluation, run files) and the schedule that
    drives them epoch after epoch.

    Attributes
    ----------
    batches : TrainingBatches
    model : torch.nn.Module
    objective : Objective
    evaluator : Evaluator
    epoch, iteration : int
        Completed epochs and steps.
    records : list of dict
        One per evaluated epoch (the lines of metrics.jsonl).
    """

    def __init__(self, config: TrainConfig, out: str | os.PathLike[str], *, progress: bool = True,
                 model: torch.nn.Module | None = None) -> None:
        self.config = config
        self.out = Path(out)
        self.processes = start(config.device)
        self.device = self.processes.device
        self.config = config = dataclasses.replace(config.resolved(), world_size=self.processes.world_size)
        datasets = [open_dataset(config.data, split, scribbles=config.scribbles,
                                 scribble_length=config.scribble_length, seed=config.seed)
                    for split in (config.train_split, config.val_split) if split != NO_VALIDATION]
        self.n_labels, self.class_names = datasets[0].n_labels, datasets[0].class_names
        if len(datasets) > 1 and datasets[1].n_labels != self.n_labels:
            raise ValueError(f"data: the train split has {self.n_labels} labels but val has {datasets[1].n_labels}")
        self.batches = TrainingBatches(datasets[0], batch_size=config.batch_size,
                                       crop_size=(config.crop_size,) * 2, scale=config.scale,
                                       seed=config.seed, device=self.device, workers=config.loader_workers,
                                       rank=self.processes.rank, world_size=self.processes.world_size)
        self.evaluator = None if len(datasets) == 1 else \
            Evaluator(*datasets, n_labels=self.n_labels, connectivity=config.connectivity, seed=config.seed,
                      device=self.device, processes=self.processes)
        if self.evaluator is not None and not self.evaluator.scored and self.processes.main:
            print(f"admsolve: note: the val split {config.val_split!r} has no masks: its losses are recorded, "
                  f"no scores (and no checkpoint-best.pt)", file=sys.stderr)
        torch.manual_seed(config.seed)
        self.model = (build_model(config.model, self.n_labels, weights=config.weights, dropout=config.dropout) if model is None
                      else wrap_model(model, self.n_labels)).to(self.device)
        if config.init:
            self.model.load_state_dict(load_model_state(config.init, self.model, "init"))
        # the network that trains: the model itself, or its DistributedDataParallel wrapper under torchrun
        self.network = self.model if self.processes.world_size == 1 else \
            torch.nn.parallel.DistributedDataParallel(self.model)
        self.objective = Objective(config, self.processes)
        self.amp_dtype = None  # mixed precision: bf16 where the GPU has it, else fp16 with loss scaling
        if config.amp:
            if self.device.type != "cuda":
                raise ValueError(f"amp: mixed precision runs on a CUDA GPU (--device cuda), got device "
                                 f"{self.device.type!r}")
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.steps = StepLog(self.out, tensorboard=config.tensorboard, enabled=self.processes.main)
        self.progress = Progress(progress and self.processes.main)
        self.epoch = 0
        self.iteration = 0
        self.records: list[dict[str, Any]] = []
        self.plotted = time.perf_counter()  # when curves.png and predictions.png were last drawn
        self._new_optimizer(1)

    # ------------------------------------------------------------------ schedule

    def phase(self, epoch: int) -> str:
        """"pce" for the first pretrain_epochs epochs (1-based), then "regularized"."""
        return "pce" if epoch <= self.config.pretrain_epochs or self.config.regularizer == "none" else "regularized"

    def _phase_settings(self, epoch: int) -> tuple[str, float, str]:
        """(network optimizer, lr, schedule) of the phase holding `epoch`: the pCE phase's for the first
        ``pretrain_epochs`` epochs, then the regularized phase's (also when there is no regularizer, so
        that a pCE-only run continued from a shared pCE phase fine-tunes as the others do)."""
        return self.config.phase_settings["pce" if epoch <= self.config.pretrain_epochs else "regularized"]

    def _new_optimizer(self, epoch: int) -> None:
        """A fresh network optimizer for the phase holding `epoch`."""
        config = self.config
        kind, lr, _ = self._phase_settings(epoch)
        if kind == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)

    def learning_rate(self, epoch: int, step: int) -> float:
        """The phase's schedule, restarted at the start of each phase, at fraction t / T of it: "poly"
        lr (1 - t / T)^power, "step" lr / 10 per third passed (the authors'), "constant" lr."""
        config = self.config
        first, last = (1, config.pretrain_epochs) if epoch <= config.pretrain_epochs else \
            (config.pretrain_epochs + 1, config.total_epochs)
        steps = self.batches.steps_per_epoch
        done = ((epoch - first) * steps + step) / ((last - first + 1) * steps)
        _, lr, schedule = self._phase_settings(epoch)
        if schedule == "poly":
            return lr * (1.0 - done) ** config.poly_power
        if schedule == "step":
            return lr * 0.1 ** math.floor(3 * done)
        return lr

    # ------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; returns its record (phase, times, mean loss terms)."""
        config = self.config
        phase = self.phase(epoch)
        if epoch == config.pretrain_epochs + 1 and epoch > 1:
            self._new_optimizer(epoch)  # the regularized phase starts with a fresh optimizer and schedule
        if phase == "regularized":
            self.objective.begin_epoch(epoch - config.pretrain_epochs)
        self.network.train()
        sums: dict[str, float] = {}
        solver_time, began = 0.0, time.perf_counter()
        steps = self.batches.steps_per_epoch
        for step, images, scribbles, valid in self.batches.epoch(epoch):
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(epoch, step)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.network(image_tensor(images, self.device))
                terms = self.objective(phase, logits, images, scribbles, valid)
            if phase == "regularized":
                solver_time += self.objective.solver_time()
            values = self._mean_over_processes({name: value.item() for name, value in terms.items()})
            if not all(math.isfinite(value) for value in values.values()):
                self._diverged(epoch, step, values)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.iteration += 1
            values.update(self._mean_over_processes(self.objective.diagnostics))
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
            self.steps.write({"iteration": self.iteration, "epoch": epoch, "step": step + 1,
                              "lr": self.optimizer.param_groups[0]["lr"], **values})
            self.progress.update(epoch, config.total_epochs, step + 1, steps, f"{phase} loss {values['loss']:.4f}")
        record = {"epoch": epoch, "iteration": self.iteration, "phase": phase,
                  "train_time": time.perf_counter() - began}
        record.update({f"train_{name}": total / steps for name, total in sums.items()})
        if self.objective.adm_step is not None and phase == "regularized":
            record["solver_time"] = solver_time
            record["gamma"] = self.objective.gamma
        return record

    def _mean_over_processes(self, values):
        """The mean of each value over the processes (the value itself in one process): what one
        process with the global batch would log; a NaN anywhere reaches every process."""
        if self.processes.world_size == 1 or not values:
            return values
        means = self.processes.sum(list(values.values())) / self.processes.world_size
        return dict(zip(values, means.tolist()))

    def _diverged(self, epoch, step, values):
        path = self.out / f"diverged-iteration-{self.iteration + 1}.pt"
        if self.processes.main:
            atomic_save(self.state(), path)
        shown = ", ".join(f"{name} = {value:.4g}" for name, value in values.items())
        raise TrainingDiverged(f"loss is not finite at epoch {epoch}, step {step + 1} (iteration "
                               f"{self.iteration + 1}): {shown}; the network before this step is "
                               f"saved in {path} (try a lower --lr)")

    def evaluate(self, *, sheet: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Scores on the validation set and grid-CRF losses on train and val (one dict)."""
        def shown(done, total):
            self.progress.update(self.epoch + 1, self.config.total_epochs, done, total, "evaluating")

        return self.evaluator(self.model, sheet=sheet, progress=shown)

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        """What ``checkpoint.pt`` holds: only tensors, numbers, strings and plain containers, so that it
        loads with ``weights_only=True``; the metric records and the random states travel with it."""
        plain = json.loads(json.dumps({"config": dataclasses.asdict(self.config), "records": self.records}))
        return {**plain, "epoch": self.epoch, "iteration": self.iteration, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": rng_state()}

    def save(self) -> None:
        if self.processes.main:
            atomic_save(self.state(), self.out / "checkpoint.pt")

    def restore(self) -> None:
        """Continue from ``checkpoint.pt`` (loaded safely: weights_only): network, optimizer, counters,
        random states, and the metric records, from which ``metrics.jsonl`` is rewritten (so a record
        written to the checkpoint but not yet to metrics.jsonl is not lost, and none is doubled)."""
        path = self.out / "checkpoint.pt"
        state = load_checkpoint(path)
        if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "iteration"} <= set(state):
            raise ValueError(f"checkpoint: {str(path)!r} is not a checkpoint of admsolve train (expected model, "
                             f"optimizer, epoch and iteration)")
        check_model_state(self.model, state["model"], path)
        self.model.load_state_dict(state["model"])
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self._new_optimizer(max(self.epoch, 1))  # the stored state is that of the last epoch's phase
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(f"checkpoint: {str(path)!r} holds an optimizer state that does not fit this run "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if "rng" in state:
            set_rng_state(state["rng"])
        records = state.get("records")
        if records is None:  # a checkpoint written before the records travelled with it
            records = [record for record in read_metrics(self.out) if record["epoch"] <= self.epoch]
        self.records = [dict(record) for record in records]
        if self.epoch and self.evaluator is not None and (not self.records or self.records[-1]["epoch"] < self.epoch):
            # the last completed epoch has no record (an older checkpoint whose metrics were lost): evaluate again
            record = {"epoch": self.epoch, "iteration": self.iteration, "phase": self.phase(self.epoch),
                      "train_time": 0.0, "reevaluated": True}
            record.update(self.evaluate(sheet=self.out / "predictions.png"))
            self.records.append(record)
            self.save()
        if self.processes.main:
            write_records(self.out / "metrics.jsonl", self.records)
            self.steps.truncate(self.iteration)

    def run(self) -> list[dict[str, Any]]:
        """Train until ``total_epochs``, checkpointing after every epoch and evaluating as
        :meth:`evaluated` says."""
        config = self.config
        if self.epoch < config.total_epochs:
            self.progress.done(f"{describe_config(config)} on {config.data} -> {self.out}")
        for epoch in range(self.epoch + 1, config.total_epochs + 1):
            record = self.train_epoch(epoch)
            # the figures (curves.png, predictions.png) are drawn at each phase's end and at most every PLOT_INTERVAL
            draw = epoch in (config.pretrain_epochs, config.total_epochs) or \
                time.perf_counter() - self.plotted >= PLOT_INTERVAL
            if self.evaluator is not None and self.evaluated(epoch):
                began = time.perf_counter()
                record.update(self.evaluate(sheet=self.out / "predictions.png" if draw else None))
                record["eval_time"] = time.perf_counter() - began
            self.epoch = epoch
            self.records.append(record)
            self.save()
            if self.processes.main:
                self.save_best(record)
                self.steps.epoch(record)
                write_records(self.out / "metrics.jsonl", self.records)
                if draw:
                    plot_curves(self.records, self.out / "curves.png", title=describe_config(config))
                    self.plotted = time.perf_counter()
            scores = (f", val mIoU {record['miou']:.3f}, accuracy {record['accuracy']:.3f}, grid-CRF loss train "
                      f"{record['grid_crf_loss_train']:.4f} val {record['grid_crf_loss_val']:.4f}"
                      if "miou" in record else "")
            self.progress.done(f"epoch {epoch}/{config.total_epochs} {record['phase']}: loss "
                               f"{record['train_loss']:.4f}{scores} ({record['train_time']:.1f} s)")
        # under torchrun no process goes on before rank 0 has written the run (a comparison's next run
        # starts from its checkpoint)
        self.processes.barrier()
        return self.records

    def save_best(self, record: dict[str, Any]) -> None:
        """Keep the network in ``checkpoint-best.pt`` when `record` has the best val mIoU of the run so far."""
        scores = [earlier["miou"] for earlier in self.records[:-1] if "miou" in earlier]
        if "miou" in record and (not scores or record["miou"] > max(scores)):
            atomic_save({"model": self.model.state_dict(), "epoch": self.epoch, "miou": record["miou"]},
                        self.out / BEST_CHECKPOINT)

    def write_model_info(self) -> None:
        """``model.json``: the labels, their names, the model and its input normalisation."""
        write_model_info(self.out, n_labels=self.n_labels, class_names=self.class_names, model=self.config.model,
                         normalization=input_normalization(self.model))

    def evaluated(self, epoch: int) -> bool:
        """Whether epoch `epoch` ends with an evaluation: every ``eval_every``-th epoch and the last
        epoch of each phase."""
        config = self.config
        every = config.eval_every or 1  # resolved: never None here
        return epoch % every == 0 or epoch in (config.pretrain_epochs, config.total_epochs)


#: Fewest seconds between two drawings of a run's curves.png and predictions.png (both are also drawn
#: at each phase's end).
PLOT_INTERVAL = 30.0


def describe_config(config: TrainConfig) -> str:
    """A short name such as "ADM grid (numba-expansion, lam 4)"."""
    if config.regularizer == "none":
        return "pCE only"
    name = f"{config.optimizer.upper()} {config.regularizer}"
    details = [f"lam {config.weight:g}"]
    if config.optimizer == "adm":
        details.insert(0, config.backend or "default solver")
        details.append(f"gamma {config.gamma:g}")
    return f"{name} ({', '.join(details)})"


def train(config: TrainConfig, out: str | os.PathLike[str], *, progress: bool = True,
          model: torch.nn.Module | None = None) -> list[dict[str, Any]]:
    """Train a network as `config` says, in the new run folder `out`; return the metric records.

    Parameters
    ----------
    config : TrainConfig
    out : str or Path
        The run folder (created); it must not hold another run.
    progress : bool, optional
        Show a progress bar and a line per epoch on stderr.
    model : torch.nn.Module, optional
        The network to train instead of building ``config.model`` (``config.weights`` is then not
        read): (N, 3, H, W) images in [0, 1] -> (N, K, h, w) logits, see
        :func:`admsolve.training.models.wrap_model`. It is trained in place. ``resume`` and
        ``evaluate_run`` rebuild the network from ``config.model``: name a "package.module:factory"
        there for a run to continue.

    Raises
    ------
    TrainingDiverged
        When a loss is NaN or infinite (after saving the network of the step before).
    """
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with lock_folder(out, "out"):
        if (out / "checkpoint.pt").exists() or (out / "metrics.jsonl").exists():
            raise FileExistsError(f"out: {str(out)!r} already holds a run; resume it or choose another folder")
        try:
            trainer = Trainer(config, out, progress=progress, model=model)
        except BaseException:
            if created and [path.name for path in out.iterdir()] == [LOCK_FILE]:
                (out / LOCK_FILE).unlink()  # a run that could not start leaves no folder behind
                out.rmdir()
            raise
        if trainer.processes.main:
            write_config(out, trainer.config)
            trainer.write_model_info()
        # the regularized phase's compiled code, while pCE trains
        with compiling_in_background([trainer.config] if trainer.config.pretrain_epochs > 0 else []):
            return trainer.run()


def resume(run: str | os.PathLike[str], *, epochs: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Continue the run in folder `run` from its last checkpoint, exactly as if it had not stopped.

    `epochs` (regularized-phase epochs) may extend the stored configuration's. Returns all the
    run's metric records.
    """
    run = Path(run)
    read_config(run)  # a run folder (else the error saying so) before its lock is taken
    with lock_folder(run, "run"):
        config = read_config(run)  # as the last writer left it
        if epochs is not None:
            if epochs < config.epochs:
                raise ValueError(f"epochs: expected at least the run's {config.epochs}, got {epochs}")
            config.epochs = epochs
            write_config(run, config)
        if (run / "checkpoint.pt").is_file():
            # the checkpoint holds the network: init (which may have moved with the run's folder) is not read
            trainer = Trainer(dataclasses.replace(config, init=None), run, progress=progress)
            trainer.restore()
        else:
            trainer = Trainer(config, run, progress=progress)
        return trainer.run()

