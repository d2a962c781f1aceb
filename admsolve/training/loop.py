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

The run folder holds ``config.json``, ``checkpoint.pt`` (written atomically after every epoch),
``metrics.jsonl`` (one JSON object per epoch), ``curves.png`` (losses and mIoU against iterations,
Fig. 3) and ``predictions.png`` (image / scribbles / prediction / ground truth, Fig. 5).
Randomness (crops, flips, scaling, batch order) is drawn from generators seeded by (seed, epoch,
image), so ``resume`` continues a stopped run exactly.
"""

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..data import augment, open_dataset
from ..energies.gridcrf import GridCRF, contrast_weights
from .config import PROBLEMS, TrainConfig
from .adm import ADMStep
from .losses import dense_crf_loss, grid_crf_loss, partial_cross_entropy, proximal_loss
from .metrics import SegmentationScores, plot_curves, prediction_sheet
from .models import build_model, wrap_model

#: Images of the training set on which grid_crf_loss_train is measured (the paper used 1,000).
TRAIN_EVAL_IMAGES = 100
#: Validation images drawn in predictions.png.
SHEET_IMAGES = 6


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or infinite; the state before that step was saved."""


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, else one line per epoch)."""

    def __init__(self, enabled=True, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()

    def update(self, epoch, total_epochs, step, steps, text):
        if self.live:
            filled = int(20 * step / max(steps, 1))
            self.stream.write(f"\repoch {epoch}/{total_epochs} [{'#' * filled}{'.' * (20 - filled)}] "
                              f"{step}/{steps} {text}   ")
            self.stream.flush()

    def done(self, line):
        if self.enabled:
            self.stream.write(("\r" + line + " " * 10 if self.live else line) + "\n")
            self.stream.flush()


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def image_tensor(images, device):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] on `device`."""
    return torch.tensor(images, device=device).permute(0, 3, 1, 2).float() / 255.0


def grid_crf_per_pixel(probs, image, *, connectivity):
    """The grid-CRF term (lam = 1) of one image's output divided by its pixel count, relaxed and discrete.

    Returns ``(relaxed, discrete)``: eq. 9 (halved) at the softmax S, the term of loss (4) that GD
    minimises, and the Potts energy of the segmentation argmax S, the discrete R(X) that ADM's latent
    step minimises. `probs` is (1, K, H, W), `image` (H, W, 3).
    """
    soft = probs[0].permute(1, 2, 0).double().numpy()
    height, width, n_labels = soft.shape
    potts = GridCRF(np.zeros((height, width, n_labels)), contrast_weights(image, connectivity=connectivity))
    relaxed, _ = potts.relaxed_energy(soft)
    return relaxed / (height * width), potts.cut_weight(soft.argmax(2)) / (height * width)


def _atomic_save(obj, path):
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def _load_state(path):
    """A model state dict from a run's checkpoint or from a plain state-dict file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"init: no such file {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["model"] if isinstance(state, dict) and "model" in state else state


class Trainer:
    """The state of one run: data, network, optimizer, and the loss of each phase."""

    def __init__(self, config, out, *, progress=True, model=None):
        self.config = config
        self.out = Path(out)
        self.device = pick_device(config.device)
        self.train_set = open_dataset(config.data, "train", scribbles=config.scribbles,
                                      scribble_length=config.scribble_length, seed=config.seed)
        self.val_set = open_dataset(config.data, "val", scribbles=config.scribbles,
                                    scribble_length=config.scribble_length, seed=config.seed)
        self.n_labels = self.train_set.n_labels
        if self.val_set.n_labels != self.n_labels:
            raise ValueError(f"data: the train split has {self.n_labels} labels but val has {self.val_set.n_labels}")
        default_crop = 96 if config.data == "synthetic" else 224
        self.crop_size = (config.crop_size or default_crop,) * 2
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        torch.manual_seed(config.seed)
        self.model = (build_model(config.resolved_model, self.n_labels, weights=config.weights) if model is None
                      else wrap_model(model, self.n_labels)).to(self.device)
        if config.init:
            self.model.load_state_dict(_load_state(config.init))
        self.adm_step = None
        if config.optimizer == "adm" and config.regularizer != "none":
            options = {"max_sweeps": config.max_sweeps} if PROBLEMS[config.regularizer] == "GridCRF" else {}
            self.adm_step = ADMStep(lam=config.weight, gamma=config.gamma, regularizer=config.regularizer,
                                    connectivity=config.connectivity, sxy=config.sxy, srgb=config.srgb,
                                    backend=config.backend, restrict_labels=config.restrict_labels,
                                    workers=config.workers, **options)
        self.progress = Progress(progress)
        self.epoch = 0
        self.iteration = 0
        self.records = []
        self._new_optimizer()

    # ------------------------------------------------------------------ schedule

    def phase(self, epoch):
        """"pce" for the first pretrain_epochs epochs (1-based), then "regularized"."""
        return "pce" if epoch <= self.config.pretrain_epochs or self.config.regularizer == "none" else "regularized"

    def _new_optimizer(self):
        config = self.config
        if config.network_optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)

    def learning_rate(self, epoch, step):
        """Poly schedule, restarted at the start of each phase: lr (1 - t / T)^power."""
        config = self.config
        first, last = (1, config.pretrain_epochs) if epoch <= config.pretrain_epochs else \
            (config.pretrain_epochs + 1, config.total_epochs)
        total = (last - first + 1) * self.steps_per_epoch
        done = (epoch - first) * self.steps_per_epoch + step
        return config.lr * (1.0 - done / total) ** config.poly_power

    # ------------------------------------------------------------------ batches

    def batch(self, epoch, indices):
        """Augmented crops of the training images `indices`, seeded by (seed, epoch, index)."""
        samples = [augment(self.train_set[i], np.random.default_rng([self.config.seed, epoch, i]),
                           crop_size=self.crop_size, scale=self.config.scale) for i in indices]
        images = np.stack([s.image for s in samples])
        scribbles = torch.from_numpy(np.stack([s.scribbles for s in samples]).astype(np.int64)).to(self.device)
        return images, scribbles

    def order(self, epoch):
        return np.random.default_rng([self.config.seed, epoch]).permutation(len(self.train_set))

    def losses(self, phase, logits, images, scribbles):
        """The terms of the loss of one step: a dict of scalar tensors, "loss" being their sum."""
        config = self.config
        if bool((scribbles != 255).any()):
            terms = {"pce": partial_cross_entropy(logits, scribbles)}
        else:  # a crop can miss every scribble; the regularizer still applies
            terms = {"pce": logits.sum() * 0.0}
        if phase == "regularized":
            pixels = logits.shape[2] * logits.shape[3]
            if self.adm_step is not None:
                latent = self.adm_step(logits.detach().softmax(1), images, scribbles)
                terms["proximal"] = proximal_loss(logits, latent, scribbles, gamma=config.gamma) / pixels
            elif config.regularizer == "grid":
                terms["grid_crf"] = grid_crf_loss(logits.softmax(1), images, lam=config.weight,
                                                  connectivity=config.connectivity) / pixels
            else:
                terms["dense_crf"] = dense_crf_loss(logits.softmax(1), images, sxy=config.sxy, srgb=config.srgb,
                                                    weight=config.weight) / pixels
        terms["loss"] = sum(terms.values())
        return terms

    # ------------------------------------------------------------------ epochs

    def train_epoch(self, epoch):
        config = self.config
        phase = self.phase(epoch)
        if epoch == config.pretrain_epochs + 1 and epoch > 1:
            self._new_optimizer()  # the regularized phase starts with a fresh optimizer and schedule
        self.model.train()
        order = self.order(epoch)
        sums, solver_time, began = {}, 0.0, time.perf_counter()
        for step in range(self.steps_per_epoch):
            indices = order[step * config.batch_size:(step + 1) * config.batch_size]
            images, scribbles = self.batch(epoch, indices)
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate(epoch, step)
            logits = self.model(image_tensor(images, self.device))
            terms = self.losses(phase, logits, images, scribbles)
            if self.adm_step is not None and phase == "regularized":
                solver_time += sum(result.time for result in self.adm_step.results)
            values = {name: value.item() for name, value in terms.items()}
            if not all(math.isfinite(value) for value in values.values()):
                path = self.out / f"diverged-iteration-{self.iteration + 1}.pt"
                _atomic_save(self.state(), path)
                shown = ", ".join(f"{name} = {value:.4g}" for name, value in values.items())
                raise TrainingDiverged(f"loss is not finite at epoch {epoch}, step {step + 1} (iteration "
                                       f"{self.iteration + 1}): {shown}; the network before this step is "
                                       f"saved in {path} (try a lower --lr)")
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            self.optimizer.step()
            self.iteration += 1
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
            self.progress.update(epoch, config.total_epochs, step + 1, self.steps_per_epoch,
                                 f"{phase} loss {values['loss']:.4f}")
        record = {"epoch": epoch, "iteration": self.iteration, "phase": phase,
                  "train_time": time.perf_counter() - began}
        record.update({f"train_{name}": total / self.steps_per_epoch for name, total in sums.items()})
        if self.adm_step is not None and phase == "regularized":
            record["solver_time"] = solver_time
        return record

    @torch.no_grad()
    def predict(self, dataset, indices):
        """(probs (1, K, H, W) tensor, sample) for each image, full size, network in eval mode."""
        self.model.eval()
        for i in indices:
            sample = dataset[i]
            logits = self.model(image_tensor(sample.image[None], self.device))
            yield logits.softmax(1).float().cpu(), sample

    def evaluate(self, *, sheet=None):
        """Scores on the validation set and grid-CRF losses on train and val (one dict)."""
        scores = SegmentationScores(self.n_labels)
        val_losses, tiles = [], []
        for i, (probs, sample) in enumerate(self.predict(self.val_set, range(len(self.val_set)))):
            prediction = probs[0].argmax(0).numpy()
            scores.update(prediction, sample.mask)
            val_losses.append(grid_crf_per_pixel(probs, sample.image, connectivity=self.config.connectivity))
            if sheet is not None and i < SHEET_IMAGES:
                tiles.append((sample, prediction))
        picked = np.random.default_rng(self.config.seed).permutation(len(self.train_set))[:TRAIN_EVAL_IMAGES]
        train_losses = [grid_crf_per_pixel(probs, sample.image, connectivity=self.config.connectivity)
                        for probs, sample in self.predict(self.train_set, sorted(picked))]
        result = {key: value for key, value in scores.result().items() if key not in ("iou", "pixels")}
        (result["grid_crf_loss_train"], result["grid_crf_energy_train"]) = np.mean(train_losses, axis=0).tolist()
        (result["grid_crf_loss_val"], result["grid_crf_energy_val"]) = np.mean(val_losses, axis=0).tolist()
        if sheet is not None and tiles:
            prediction_sheet(sheet, [s.image for s, _ in tiles], [s.scribbles for s, _ in tiles],
                             [p for _, p in tiles], [s.mask for s, _ in tiles], ids=[s.id for s, _ in tiles])
        return result

    # ------------------------------------------------------------------ checkpoints

    def state(self):
        return {"config": dataclasses.asdict(self.config), "epoch": self.epoch, "iteration": self.iteration,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def save(self):
        _atomic_save(self.state(), self.out / "checkpoint.pt")

    def restore(self):
        """Continue from ``checkpoint.pt``: network, optimizer, counters; later metrics lines dropped."""
        state = torch.load(self.out / "checkpoint.pt", map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.epoch, self.iteration = state["epoch"], state["iteration"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.records = [record for record in read_metrics(self.out) if record["epoch"] <= self.epoch]
        _write_lines(self.out / "metrics.jsonl", self.records)

    def run(self):
        """Train until ``total_epochs``, evaluating and checkpointing after every epoch."""
        config = self.config
        for epoch in range(self.epoch + 1, config.total_epochs + 1):
            record = self.train_epoch(epoch)
            record.update(self.evaluate(sheet=self.out / "predictions.png"))
            self.epoch = epoch
            self.records.append(record)
            self.save()
            _write_lines(self.out / "metrics.jsonl", self.records)
            plot_curves(self.records, self.out / "curves.png", title=describe_config(config))
            self.progress.done(f"epoch {epoch}/{config.total_epochs} {record['phase']}: loss "
                               f"{record['train_loss']:.4f}, val mIoU {record['miou']:.3f}, accuracy "
                               f"{record['accuracy']:.3f}, grid-CRF loss train {record['grid_crf_loss_train']:.4f} "
                               f"val {record['grid_crf_loss_val']:.4f} ({record['train_time']:.1f} s)")
        return self.records


def _write_lines(path, records):
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps(record) + "\n" for record in records))
    os.replace(temporary, path)


def read_metrics(run):
    """The records of ``RUN/metrics.jsonl`` (a list of dicts)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def describe_config(config):
    """A short name such as "ADM grid (numba-expansion, lam 4)"."""
    if config.regularizer == "none":
        return "pCE only"
    name = f"{config.optimizer.upper()} {config.regularizer}"
    details = [f"lam {config.weight:g}"]
    if config.optimizer == "adm":
        details.insert(0, config.backend or "default solver")
        details.append(f"gamma {config.gamma:g}")
    return f"{name} ({', '.join(details)})"


def train(config, out, *, progress=True, model=None):
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
    if (out / "checkpoint.pt").exists() or (out / "metrics.jsonl").exists():
        raise FileExistsError(f"out: {str(out)!r} already holds a run; resume it or choose another folder")
    trainer = Trainer(config, out, progress=progress, model=model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    return trainer.run()


def resume(run, *, epochs=None, progress=True):
    """Continue the run in folder `run` from its last checkpoint, exactly as if it had not stopped.

    `epochs` (regularized-phase epochs) may extend the stored configuration's. Returns all the
    run's metric records.
    """
    run = Path(run)
    config = _read_config(run)
    if epochs is not None:
        if epochs < config.epochs:
            raise ValueError(f"epochs: expected at least the run's {config.epochs}, got {epochs}")
        config.epochs = epochs
        (run / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    trainer = Trainer(config, run, progress=progress)
    if (run / "checkpoint.pt").is_file():
        trainer.restore()
    return trainer.run()


def _read_config(run):
    path = Path(run) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"run: no config.json in {str(run)!r}: not a run folder")
    return TrainConfig.from_dict(json.loads(path.read_text()))


def evaluate_run(run, *, progress=True):
    """Re-evaluate a run's last checkpoint: validation scores and grid-CRF losses (a dict), and
    ``predictions.png`` / ``curves.png`` redrawn in the run folder."""
    run = Path(run)
    config = _read_config(run)
    if not (run / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"run: no checkpoint.pt in {str(run)!r} (the run has not finished an epoch)")
    trainer = Trainer(config, run, progress=progress)
    trainer.model.load_state_dict(_load_state(run / "checkpoint.pt"))
    result = trainer.evaluate(sheet=run / "predictions.png")
    records = read_metrics(run)
    if records:
        plot_curves(records, run / "curves.png", title=describe_config(config))
    return result
