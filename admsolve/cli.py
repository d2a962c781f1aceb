"""The ``admsolve`` command line: segment an image (or a folder of images) from scribbles, list backends,
run the demo, and train, evaluate, compare, apply and export networks trained from scribbles (``train``,
``evaluate``, ``compare``, ``predict``, ``export``: these need the ``train`` extra)."""

import argparse
import contextlib
import dataclasses
import inspect
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import __version__, backends
from ._files import writes_outputs
from ._support import ProgressBar
from .energies.densecrf import DenseCRF
from .energies.gridcrf import GridCRF, contrast_weights
from .data.io import (LABEL_MAP_SUFFIXES, check_image_path, check_label_map_path, colorize, overlay, probe_image,
                      read_image, read_label_map, save_sheet, write_atomically, write_image, write_label_map)
from .solve import solve, solve_batch
from .training.crf import CRF_DEFAULTS
from .training.config import (CONFIGURATIONS, DEFAULT_CONFIGURATIONS, LATENT_INITS, MODELS, NETWORK_OPTIMIZERS, OPTIMIZERS,
                              SCHEDULES, TrainConfig)
from .training.regularizers import REGULARIZERS
from .energies.unaries import scribble_unary


def scribble_problem(image, scribbles, *, kind=GridCRF, lam, connectivity):
    """The interactive-segmentation problem: colour-model unaries from the scribbles, which are also
    its hard constraints, with a grid CRF (contrast weights, `lam`, `connectivity`) or a dense CRF
    (pydensecrf's usual kernels: bilateral sxy=80, srgb=13, compat=10; Gaussian sxy=3, compat=3)."""
    if scribbles.shape != image.shape[:2]:
        raise ValueError(f"scribbles: expected the image's size {image.shape[:2]}, got {scribbles.shape}")
    unary = scribble_unary(image, scribbles)
    if issubclass(kind, DenseCRF):
        return DenseCRF(unary, image, seeds=scribbles)
    return GridCRF(unary, contrast_weights(image, connectivity=connectivity), lam=lam, seeds=scribbles)


def progress_line(stream, name, every=10):
    """A backend ``callback(iteration, value)`` that redraws one line on `stream` every `every` iterations
    (a long relaxed-gd solve); call its ``close()`` to end the line if one was drawn."""
    drawn = []

    def callback(iteration, value):
        if iteration % every == 0:
            stream.write(f"\r{name}: iteration {iteration}, relaxed energy {value:.6g}  ")
            stream.flush()
            drawn.append(iteration)

    callback.close = lambda: drawn and (stream.write("\n"), stream.flush())
    return callback


def cmd_segment(args):
    if Path(args.image).is_dir():
        return segment_folder(args)
    check_label_map_path(args.output, "--output")  # before any work: a lossless label-map file
    if args.overlay:
        check_image_path(args.overlay, "--overlay")
    image = read_image(args.image)
    scribbles = read_label_map(args.scribbles, "scribbles")
    kind = backends.lookup(args.backend).problem if args.backend else GridCRF
    problem = scribble_problem(image, scribbles, kind=kind, lam=args.lam, connectivity=args.connectivity)
    name = args.backend or backends.default_backend(problem)
    options = {}
    if sys.stderr.isatty() and "callback" in inspect.signature(backends.load(name)).parameters:
        options["callback"] = progress_line(sys.stderr, name)  # relaxed-gd: hundreds of iterations
    try:
        result = solve(problem, name, max_iter=args.max_iter, **options)
    finally:
        if options:
            options["callback"].close()
    write_label_map(args.output, result.labels, "--output")
    if args.overlay:
        save_sheet(args.overlay, [overlay(image, result.labels, scribbles)],
                   [f"{result.backend}: energy {result.energy:.1f}"], columns=1)
    print(f"{args.output}: {problem!r} solved by {result.backend} in {result.time:.3f} s, "
          f"{result.sweeps} iterations, energy {result.energy:.3f} ({result.message})")


#: Images segmented between two redrawings of the progress bar: at once in parallel by
#: solve_batch, and never all of a large folder in memory.
FOLDER_CHUNK = 8


def image_files(folder):
    """The files of `folder` whose extension names a picture Pillow reads, sorted by name."""
    readable = {suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.OPEN}
    return sorted(path for path in Path(folder).iterdir() if path.is_file() and path.suffix.lower() in readable)


def output_folder(path, name):
    """`path` as a Path if it is a folder or can become one (created later, when there is work)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}: expected a folder for the outputs, got the file {str(path)!r}")
    return path


def segment_folder(args):
    """``segment IMAGES_DIR SCRIBBLES_DIR -o OUT_DIR``: every image with scribbles of the same name, through
    solve_batch; the failures listed at the end (status 1), the others written."""
    images_dir, scribbles_dir = Path(args.image), Path(args.scribbles)
    out = output_folder(args.output, "--output")
    if not scribbles_dir.is_dir():
        raise ValueError(f"SCRIBBLES: with a folder of images, expected a folder of scribbles, got {args.scribbles!r}")
    if args.overlay:
        raise ValueError("--overlay: names one file, for one image; with folders, expected no --overlay")
    scribbles = {}
    for path in sorted(scribbles_dir.iterdir()):  # .npy before .png before .tif: the first one of a name wins
        if path.is_file() and path.suffix.lower() in LABEL_MAP_SUFFIXES:
            scribbles.setdefault(path.stem, path)
    images = image_files(images_dir)
    pairs = [(path, scribbles[path.stem]) for path in images if path.stem in scribbles]
    unpaired = [path.name for path in images if path.stem not in scribbles]
    if not pairs:
        raise ValueError(f"SCRIBBLES: expected scribbles named as the images of {args.image!r} (e.g. "
                         f"{images[0].stem + '.png' if images else 'NAME.png'}) in {args.scribbles!r}, got no match "
                         f"among {len(images)} images and {len(scribbles)} label maps")
    if unpaired:
        print(f"skipped {len(unpaired)} images without scribbles: {', '.join(unpaired)}")
    out.mkdir(parents=True, exist_ok=True)
    kind = backends.lookup(args.backend).problem if args.backend else GridCRF
    failures, written = {}, 0
    bar = ProgressBar(len(pairs), "segmenting")
    try:
        for first in range(0, len(pairs), FOLDER_CHUNK):
            problems = {}
            for image_path, scribble_path in pairs[first:first + FOLDER_CHUNK]:
                try:
                    problems[image_path] = scribble_problem(read_image(image_path), read_label_map(scribble_path),
                                                            kind=kind, lam=args.lam, connectivity=args.connectivity)
                except (ValueError, TypeError, OSError) as exc:
                    failures[image_path.name] = str(exc)
            for image_path, labels in _solve_each(problems, args, failures).items():
                write_label_map(out / f"{image_path.stem}.png", labels, "--output")
                written += 1
            bar.update(min(first + FOLDER_CHUNK, len(pairs)))
    finally:
        bar.close()
    print(f"{out}: {written} label maps written", end="")
    if not failures:
        print()
        return 0
    print(f"; {len(failures)} failed:")
    for name, reason in failures.items():
        print(f"  {name}: {reason}", file=sys.stderr)
    return 1


def _solve_each(problems, args, failures):
    """image path -> labels of each problem, solved together by solve_batch; where one fails, each is
    solved alone and the failures recorded (name -> reason)."""
    if not problems:
        return {}
    name = args.backend or backends.default_backend(next(iter(problems.values())))
    try:
        results = solve_batch(list(problems.values()), name, max_iter=args.max_iter)
        return {path: result.labels for path, result in zip(problems, results)}
    except (ValueError, TypeError, FloatingPointError, RuntimeError):
        labels = {}
        for path, problem in problems.items():
            try:
                labels[path] = solve(problem, name, max_iter=args.max_iter).labels
            except (ValueError, TypeError, FloatingPointError, RuntimeError) as exc:
                failures[path.name] = str(exc)
        return labels


def cmd_backends(args):
    for name, entry in backends.BACKENDS.items():
        places = backends.devices_here(name)
        usable = [device for device, status in places.items() if status is True]
        reasons = [f"{device}: {status}" for device, status in places.items() if status is not True]
        state = "runs on " + " and ".join(usable) if usable else "unavailable"
        if reasons:
            state += ("; " if usable else ": ") + "; ".join(reasons) if usable else ": " + reasons[0].split(": ", 1)[1]
        print(f"{name:16s} {entry.problem.__name__:9s} {entry.description} [{state}]")


def cmd_demo(args):
    from .data.examples import synthetic_scene

    if args.sheet:
        check_image_path(args.sheet, "--sheet")
    image, scribbles, truth = synthetic_scene()
    problems = {kind: scribble_problem(image, scribbles, kind=kind, lam=args.lam, connectivity=args.connectivity)
                for kind in (GridCRF, DenseCRF)}
    print(f"built-in example: {problems[GridCRF]!r}; the dense CRF has the same unaries and seeds")
    print(f"{'backend':16s} {'model':8s} {'iters':>6s} {'energy':>12s} {'time (s)':>9s} {'accuracy':>9s}")
    tiles = [image, overlay(image, truth, scribbles), colorize(problems[GridCRF].initial_labels())]
    captions = ["image", "truth + scribbles", "colour model alone"]
    for name, status in backends.available_backends().items():
        if status is not True:
            print(f"{name:16s} skipped: {status}")
            continue
        kind = backends.BACKENDS[name].problem
        began = time.perf_counter()
        solve(problems[kind], name, max_iter=args.max_iter)  # the first call also compiles or imports the backend
        first_call = time.perf_counter() - began
        result = solve(problems[kind], name, max_iter=args.max_iter)
        accuracy = float(np.mean(result.labels == truth))
        print(f"{name:16s} {kind.__name__[:-3].lower():8s} {result.sweeps:6d} {result.energy:12.2f} {result.time:9.3f} "
              f"{accuracy:9.2%}   (first call {first_call:.2f} s)")
        tiles.append(colorize(result.labels))
        captions.append(f"{name}: E={result.energy:.0f}")
    if args.sheet:
        save_sheet(args.sheet, tiles, captions, columns=3)
        print(f"wrote {args.sheet}")


def _training():
    """The training subpackage, or an ImportError naming the extra that provides torch."""
    try:
        from . import training
    except ImportError as exc:
        raise ImportError(f"training needs PyTorch and matplotlib: pip install \"admsolve[train]\" ({exc})") from None
    return training


def _config_values(args):
    """The TrainConfig fields given on the command line."""
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    return {name: value for name, value in vars(args).items() if name in fields and value is not None}


def _train_config(args):
    return TrainConfig(**_config_values(args))


def cmd_train(args):
    training = _training()
    if args.resume:
        given = [name for name in _config_values(args) if name != "epochs"]
        if given or args.out:
            flags = ", ".join("--" + name.replace("_", "-") for name in given + (["out"] if args.out else []))
            raise ValueError(f"--resume: a run continues with its stored settings (only --epochs may extend it), "
                             f"got {flags}")
        records = training.resume(args.resume, epochs=args.epochs, progress=not args.quiet)
        run = args.resume
    else:
        if not args.out:
            raise ValueError("--out: expected the run folder to create (or --resume RUN), got nothing")
        records = training.train(_train_config(args), args.out, progress=not args.quiet)
        run = args.out
    last = records[-1]
    if "miou" in last:
        scores = f"val mIoU {last['miou']:.4f}, accuracy {last['accuracy']:.4f}, "
    else:
        scores = f"loss {last['train_loss']:.4f}, no val scores, "
    losses = (f"grid-CRF loss train {last['grid_crf_loss_train']:.5f} val {last['grid_crf_loss_val']:.5f}; "
              if "grid_crf_loss_val" in last else "")
    print(f"{run}: epoch {last['epoch']}, {scores}{losses}metrics.jsonl, curves.png"
          f"{', predictions.png' if losses else ''} written")


def _crf_options(args):
    """The dense_crf options of --crf and its --crf-* flags, or None without --crf."""
    if not args.crf:
        return None
    return {name: getattr(args, "crf_" + name) for name in CRF_DEFAULTS}


def cmd_evaluate(args):
    training = _training()
    result = training.evaluate_run(args.run, data=args.data, split=args.split, checkpoint=args.checkpoint,
                                   crf=_crf_options(args), device=args.device, progress=not args.quiet)
    for key, value in result.items():
        print(f"{key:22s} {value:.5f}")
    if args.data is None and args.split is None and not args.crf:
        print(f"wrote {args.run}/predictions.png")


def prediction_inputs(inputs):
    """The image files named by predict's INPUT arguments (files as given, the pictures of folders by
    name), each checked to be a picture (its header read) before any work."""
    files = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise ValueError(f"INPUT: expected images in the folder {given!r}, got none")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"INPUT: no such image or folder {given!r}")
    for path in files:
        probe_image(path, "INPUT")
    return files


def cmd_predict(args):
    training = _training()
    out = output_folder(args.output, "--output")
    predictor = training.Predictor(args.run, checkpoint=args.checkpoint, device=args.device,
                                   batch_size=args.batch_size, tile_size=args.tile_size, crf=_crf_options(args))
    files = prediction_inputs(args.inputs)
    targets, writers = {}, {}
    for path in files:
        wanted = [out / f"{path.stem}.png"] + ([out / f"{path.stem}-overlay.png"] if args.overlay else []) + \
            ([out / f"{path.stem}.npy"] if args.probs else [])
        for target in wanted:
            if target in writers:
                raise ValueError(f"INPUT: {str(writers[target])!r} and {str(path)!r} would both write {str(target)!r}")
            writers[target] = path
        targets[path] = wanted
    todo = [path for path in files if args.overwrite or not all(target.exists() for target in targets[path])]
    out.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar(len(todo), "predicting", enabled=not args.quiet)
    try:
        for first in range(0, len(todo), args.batch_size):
            chunk = todo[first:first + args.batch_size]
            images = [read_image(path) for path in chunk]
            for path, image, (labels, probs) in zip(chunk, images, predictor.predict(images)):
                write_label_map(targets[path][0], labels)
                if args.overlay:
                    write_image(targets[path][1], overlay(image, labels))
                if args.probs:
                    write_atomically(targets[path][-1], lambda stream: np.save(stream, probs))
            bar.update(first + len(chunk))
    finally:
        bar.close()
    skipped = f"; {len(files) - len(todo)} skipped, their outputs exist (--overwrite replaces them)" \
        if len(todo) < len(files) else ""
    print(f"{out}: {len(todo)} label maps written ({predictor.n_labels} labels, {predictor.checkpoint.name}"
          f"{', dense CRF' if predictor.crf else ''}){skipped}")


def cmd_compare(args):
    training = _training()
    base = _train_config(args)
    rows = training.compare(base, args.out, configurations=args.configs.split(","), progress=not args.quiet)
    print(f"data {base.data}: pCE for {base.pretrain_epochs} epochs, then {base.epochs} epochs per configuration")
    print(training.format_table(rows))
    print(f"wrote {args.out}/comparison.md, comparison.json, comparison.png")


def cmd_export(args):
    training = _training()
    from .training.export import check_export_path

    check_export_path(args.output, "--output")  # before any work
    path = training.export_run(args.run, args.output, checkpoint=args.checkpoint)
    print(f"{path}: the network of {args.run} ({args.checkpoint} checkpoint): float32 RGB (N, 3, H, W) in 0..255 -> "
          f"logits (N, K, H, W)")


def _numbers(text, name, kind=float):
    """A comma-separated list of numbers ('' for none)."""
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated numbers, got {text!r}") from None


def cmd_reproduce(args):
    _training()
    from .training import regime, reproduction

    if not args.datasets and not args.report_only:
        raise ValueError("DATA: expected at least one dataset folder (or --report-only), got none")
    values = _config_values(args)
    plan = reproduction.Plan(seeds=_numbers(args.seeds, "seeds", int), configurations=tuple(args.configs.split(",")),
                             lam_grid=_numbers(args.lam_grid, "lam-grid"), gamma_grid=_numbers(args.gamma_grid, "gamma-grid"),
                             lengths=_numbers(args.lengths, "lengths"),
                             solvers=tuple(name for name in args.solvers.split(",") if name),
                             variants=_variants(args.variants, reproduction.variants(TrainConfig(**values).epochs)),
                             tune=not args.no_tune)
    suffix = "-authors" if args.regime == "authors" else ""
    folders = {}
    for data in args.datasets:
        folders[Path(args.out) / (Path(data.rstrip("/")).name + suffix)] = TrainConfig(**{**values, "data": data})
    studies = []
    for folder, base in folders.items():  # this call's datasets: run (or, with --report-only, read)
        if args.regime == "authors":
            studies.append(regime.study(base, folder, regime.RegimePlan(seeds=plan.seeds), progress=not args.quiet,
                                        train=not args.report_only))
        else:
            studies.append(reproduction.reproduce(base, folder, plan, progress=not args.quiet,
                                                  train=not args.report_only))
    for stored in sorted(Path(args.out).glob("*/*.json")):  # the other studies in --out: read
        if stored.parent in folders:
            continue
        if stored.name == reproduction.STUDY_FILE:
            base, stored_plan = reproduction.load_study(stored.parent)
            studies.append(reproduction.reproduce(base, stored.parent, stored_plan, progress=False, train=False))
        elif stored.name == regime.REGIME_FILE:
            base, regime_plan = regime.load(stored.parent)
            studies.append(regime.study(base, stored.parent, regime_plan, progress=False, train=False))
    if not studies:
        raise ValueError(f"--out: expected a folder holding studies of admsolve reproduce, got none in {args.out!r}")
    preface = Path(args.preface).read_text() if args.preface else ""
    report = reproduction.write_report(studies, args.report, preface=preface)
    print(f"wrote {report} and its figures in {report.with_suffix('')}/")


def _variants(text, known):
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--variants: expected names among {', '.join(known)}, got {', '.join(unknown)}")
    return {name: known[name] for name in names}


#: Help of each TrainConfig field on the command line (its default is added from TrainConfig).
TRAINING_OPTIONS = {
    "data": "'synthetic' (built in) or a dataset folder in the layout of ../shared/data or PASCAL VOC + ScribbleSup",
    "train_split": "split to train on ('train-fit': train without the fifth held back for tuning)",
    "val_split": "split to evaluate on ('train-holdout': the fifth of train held back)",
    "optimizer": "gd: gradient descent on the relaxed regularizer; adm: the paper's ADM with a discrete solver",
    "regularizer": "none (partial cross-entropy only), grid (grid CRF) or dense (dense CRF)",
    "backend": "ADM's solver (grid: numba-expansion, maxflow, numba-swap, numba-icm, relaxed-gd; dense: mean-field)",
    "lam": "weight of the regularizer per pixel (default per optimizer and regularizer: on dataset folders the "
           "values of the study in the authors' regime, GD grid 0.5, ADM grid 160, GD dense 0.5, ADM dense 0.5; "
           "on the synthetic data 4)",
    "gamma": "ADM: weight of the divergence between the network and the latent labeling (default: 1 on dataset "
             "folders, the study in the authors' regime; 2 on the synthetic data)",
    "gamma_growth": "ADM: gamma is multiplied by this at each regularized epoch (1: fixed, the paper's choice; "
                    "above 1: the annealing of its eq. 6)",
    "connectivity": "grid CRF neighbourhood, 4 or 8",
    "sxy": "dense CRF: spatial kernel width in pixels",
    "srgb": "dense CRF: colour kernel width",
    "max_iter": ("ADM: solver iterations per latent step (sweeps of moves, the paper: 5; mean-field updates; "
                 "relaxed-gd steps: 5 hardly move X off argmax S, it needs tens)"),
    "restrict_labels": "ADM: move only to the labels of an image's scribbles and of the prediction (default: on "
                       "dataset folders, off on the synthetic data)",
    "latent_stride": "ADM: solve eq. 8 on a grid 1/N of the input's in each direction (1: the paper's full resolution)",
    "model": "network: " + ", ".join(MODELS) + ", or package.module:factory (factory(n_labels) returns a torch "
             "nn.Module giving (N, K, h, w) logits) (default effnet-lite0 on a dataset folder, fcn-small on the "
             "synthetic data)",
    "weights": "local weights file: the backbone (DeepLabV3, effnet-lite0: instead of the pip package's) or the "
               "whole network (fcn-small, a factory)",
    "init": "start the network from another run's checkpoint.pt",
    "epochs": "epochs of the regularized phase",
    "pretrain_epochs": "epochs of partial cross-entropy before it (phase 1)",
    "eval_every": "evaluate every N epochs and after each phase's last epoch (default 2 on the synthetic data, "
                  "whose epochs are 4 steps, else 1)",
    "batch_size": "images per batch",
    "crop_size": "side of the random square crops (default 96 on the synthetic data, else 224)",
    "scale": "range of the random scaling, two numbers",
    "network_optimizer": "adam or sgd, new at the start of each phase",
    "lr": "base learning rate",
    "schedule": "learning-rate schedule of a phase, restarted in each: poly, step (divided by 10 after each third, "
                "the authors') or constant",
    "finetune_optimizer": "the regularized phase's network optimizer (default: adam on dataset folders, "
                          "--network-optimizer on the synthetic data)",
    "finetune_lr": "the regularized phase's base learning rate (default: 3e-4 on dataset folders, chosen by the "
                   "study in the authors' regime; --lr on the synthetic data; the authors fine-tune at 1e-4)",
    "finetune_schedule": "the regularized phase's schedule (default: step on dataset folders, --schedule on the "
                         "synthetic data)",
    "proximal_weight": "ADM: weight of eq. 7's cross-entropy towards the latent labeling (default: gamma, the "
                       "paper's equations; the authors' code: 1.5)",
    "latent_init": "ADM: the labeling the solver starts from: argmax (of the network's softmax) or label-0 "
                   "(gco's default, the authors' code) (default: label-0 on dataset folders, argmax on the "
                   "synthetic data)",
    "dropout": "effnet-lite0: dropout before the classifier while training (default: 0.5 on dataset folders, as "
               "the authors' network; 0 on the synthetic data and with other networks)",
    "padding_in_losses": "let crop padding take part in the regularizers, ADM's latent step and the proximal term "
                         "(the behaviour before 0.3; by default padding is left out of every loss)",
    "momentum": "sgd momentum",
    "weight_decay": "weight decay",
    "poly_power": "power of the poly schedule",
    "scribbles": "'auto' (the folder's scribbles*/ or generated from the masks), a folder name, 'generate', or "
                 "'masks' (full supervision)",
    "scribble_length": "length of generated scribbles, 1 (full) down to 0 (a click per region)",
    "seed": "seed of the network's initialisation, the crops and the generated scribbles",
    "device": "auto (CUDA when present), cpu or cuda",
    "workers": "CPU threads of ADM's latent step (parallel solves) and of the dense-CRF loss (default: the CPU "
               "count, divided among the processes of a node under torchrun)",
    "loader_workers": "DataLoader worker processes preparing the batches (0: in the training process)",
    "amp": "mixed precision on a CUDA GPU (bf16 where supported, else fp16 with loss scaling)",
    "tensorboard": "also write TensorBoard event files (RUN/tensorboard; needs the tensorboard package)",
}


def _add_training_arguments(parser, *, skip=()):
    """One option per TrainConfig field (but those in `skip` and the recorded world_size); an option
    left out keeps TrainConfig's default."""
    for field in dataclasses.fields(TrainConfig):
        if field.name in skip or field.name == "world_size":
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = TRAINING_OPTIONS[field.name]
        if field.default is not None and field.type != "bool":
            help_text += f" (default {field.default})"
        choices = {"optimizer": OPTIMIZERS, "regularizer": tuple(REGULARIZERS),
                   "network_optimizer": NETWORK_OPTIMIZERS, "finetune_optimizer": NETWORK_OPTIMIZERS,
                   "schedule": SCHEDULES, "finetune_schedule": SCHEDULES, "latent_init": LATENT_INITS,
                   "connectivity": (4, 8)}.get(field.name)
        if field.type == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        elif field.type == "bool | None":  # on, off, or the data's default
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif field.name == "scale":
            parser.add_argument(flag, type=float, nargs=2, metavar=("LOW", "HIGH"), help=help_text)
        else:
            kind = {"int": int, "float": float}.get(field.type.split(" ")[0], str)
            parser.add_argument(flag, type=kind, choices=choices, help=help_text)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but a usage error is one line (``admsolve: error: ...``, exit 2) like every
    other error of the command line; ``--help`` shows the usage."""

    def error(self, message):
        self.exit(2, f"admsolve: error: {message} (see {self.prog} --help)\n")


def build_parser():
    parser = _Parser(prog="admsolve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"admsolve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment an image (or a folder of images) from scribbles with a "
                                                  "grid CRF")
    segment.add_argument("image", help="image file (any format Pillow reads), or a folder of images")
    segment.add_argument("scribbles", help="label PNG, same size: 0..K-1 scribbled labels, 255 unlabeled; with a folder "
                                           "of images, a folder of them named as the images (NAME.png for NAME.jpg)")
    segment.add_argument("-o", "--output", required=True, help="label map to write (values 0..K-1): .png, .tif or .npy "
                                                               "(lossless); with folders, the folder of NAME.png label "
                                                               "maps (images without scribbles are listed and skipped; "
                                                               "those that fail are listed at the end, exit status 1)")
    segment.add_argument("--overlay", help="also write the segmentation drawn over the image")
    segment.set_defaults(handler=cmd_segment)

    commands.add_parser("backends", help="list solver backends and whether each can be used").set_defaults(
        handler=cmd_backends)

    demo = commands.add_parser("demo", help="segment the built-in example with every available backend")
    demo.add_argument("--sheet", help="write a PNG with every backend's segmentation")
    demo.add_argument("--max-iter", type=int, default=None,
                      help="cap on each solver's iterations (default: each backend's own)")
    demo.set_defaults(handler=cmd_demo)

    train = commands.add_parser("train", help="train a network from scribbles (ADM or gradient descent)")
    train.add_argument("--out", help="run folder to create: config.json, checkpoint.pt, metrics.jsonl, PNGs")
    train.add_argument("--resume", metavar="RUN", help="continue a stopped run (its settings; --epochs may extend it)")
    _add_training_arguments(train)
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="score a run's network on its validation set or on any folder")
    evaluate.add_argument("run", help="run folder written by admsolve train")
    evaluate.add_argument("--data", help="a dataset folder to score on instead of the run's (its masks, at most the "
                                         "run's labels)")
    evaluate.add_argument("--split", help="the split scored (default: the run's val split; 'val' with --data)")
    evaluate.add_argument("--checkpoint", default="last", help="last (default), best (the best val mIoU) or a "
                                                               "checkpoint file")
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = commands.add_parser("predict", help="label new images with a run's network: a palette PNG per image")
    predict.add_argument("run", help="run folder written by admsolve train")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="images, and folders of images")
    predict.add_argument("-o", "--output", required=True, help="folder of the outputs: NAME.png, the label map of "
                                                               "NAME.jpg (palette PNG, value = label, the input's size)")
    predict.add_argument("--checkpoint", default="best", help="best (default: the best val mIoU, else the last), "
                                                              "last, or a checkpoint file")
    predict.add_argument("--overlay", action="store_true", help="also write NAME-overlay.png, the labels drawn "
                                                                "over the image")
    predict.add_argument("--probs", action="store_true", help="also write NAME.npy, the (H, W, K) float32 "
                                                              "probabilities (with --crf: the CRF's marginals)")
    predict.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: skip "
                                                                  "those inputs)")
    predict.add_argument("--batch-size", type=int, default=4, help="images (or tiles) of one size through the "
                                                                   "network at once (default %(default)s)")
    predict.add_argument("--tile-size", type=int, default=1024,
                         help="images with a side longer than this go through the network in overlapping tiles of "
                              "at most this size, so that its memory is bounded by a tile's (a multiple of 128; "
                              "default %(default)s)")
    predict.set_defaults(handler=cmd_predict)
    export = commands.add_parser("export", help="export a run's network as ONNX (.onnx) or TorchScript (.pt)")
    export.add_argument("run", help="run folder written by admsolve train")
    export.add_argument("-o", "--output", required=True,
                        help="model.onnx (needs admsolve[export]) or model.pt: a graph taking float32 RGB (N, 3, H, W) "
                             "in 0..255 and giving logits (N, K, H, W), normalisation inside")
    export.add_argument("--checkpoint", default="best", help="best (default), last, or a checkpoint file")
    export.set_defaults(handler=cmd_export)

    for sub in (evaluate, predict):
        sub.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
        sub.add_argument("--crf", action="store_true", help="refine the network's softmax by a dense CRF (DeepLab's "
                                                            "post-processing), solved by mean-field")
        for name, value in CRF_DEFAULTS.items():
            what = {"sxy": "bilateral kernel's spatial width (px)", "srgb": "bilateral kernel's colour width",
                    "compat": "bilateral kernel's weight", "gaussian_sxy": "Gaussian kernel's width (px)",
                    "gaussian_compat": "Gaussian kernel's weight", "max_iter": "mean-field iterations"}[name]
            sub.add_argument("--crf-" + name.replace("_", "-"), type=type(value), default=value,
                             help=f"--crf: the {what} (default %(default)s)")

    compare = commands.add_parser("compare", help="train pCE only, GD grid, ADM grid, GD dense from one shared "
                                                  "pCE phase and print a table")
    compare.add_argument("--out", default="runs/compare", help="folder of the comparison (default runs/compare); "
                                                               "finished runs in it are reused")
    compare.add_argument("--configs", default=",".join(DEFAULT_CONFIGURATIONS),
                         help="comma-separated, among " + ", ".join(CONFIGURATIONS) + " (default %(default)s)")
    _add_training_arguments(compare)
    compare.set_defaults(handler=cmd_compare)

    reproduce = commands.add_parser("reproduce", help="run (or continue) the study of the paper's claims and "
                                                      "write its report (Tables 1-3, Figs. 3, 5, 6, solver ablation)")
    reproduce.add_argument("datasets", nargs="*", metavar="DATA", help="dataset folders (or 'synthetic'), one "
                                                                       "section of the report each (the studies "
                                                                       "already in --out get theirs too)")
    reproduce.add_argument("--out", default="docs/reproduction/runs",
                           help="folder of the runs (default %(default)s: their records are kept in the repository, "
                                "their checkpoints are not); finished runs in it are reused")
    reproduce.add_argument("--report", default="docs/reproduction.md", help="the Markdown report (default "
                                                                            "%(default)s); figures beside it")
    reproduce.add_argument("--seeds", default="0,1,2", help="seeds of Tables 1-3 (default %(default)s)")
    reproduce.add_argument("--configs", default="full,pce,gd-dense,gd-grid,adm-grid,adm-dense",
                           help="configurations of the tables (default %(default)s)")
    reproduce.add_argument("--lam-grid", default="0.5,2,8,32", help="lam values tried per configuration on the "
                                                                  "held-back fifth of train (default %(default)s)")
    reproduce.add_argument("--gamma-grid", default="1,4", help="gamma values tried for ADM at its best lam, besides "
                                                               "--gamma (default %(default)s)")
    reproduce.add_argument("--no-tune", action="store_true", help="use --lam/--gamma for every configuration")
    reproduce.add_argument("--lengths", default="1,0.5,0.3,0", help="scribble lengths of Fig. 6, generated "
                                                                    "scribbles ('' to skip; default %(default)s)")
    reproduce.add_argument("--solvers", default="numba-expansion,numba-swap,numba-icm,relaxed-gd",
                           help="latent solvers of the ablation ('' to skip; default %(default)s)")
    reproduce.add_argument("--variants", default="restricted,gamma-growth,stride-2,stride-4",
                           help="changes to ADM grid measured on the held-back fifth of train: restricted "
                                "(--restrict-labels), gamma-growth (γ growing 4× over the epochs, --gamma-growth), "
                                "stride-2, stride-4 (--latent-stride) ('' to skip; default %(default)s)")
    reproduce.add_argument("--preface", help="a Markdown file put after the report's heading (e.g. the "
                                             "reading of its tables)")
    reproduce.add_argument("--regime", choices=("paper", "authors"), default="paper",
                           help="paper: the study of the paper's claims (default); authors: ADM as its authors' code "
                                "runs it (fine-tuning by SGD at 1e-4, lam/gamma 80, proximal weight 1.5, expansion "
                                "from label 0, dropout), tuned on the held-back fifth, with an ablation back to the "
                                "first study's settings, in DATA-authors/ under --out (--seeds applies)")
    reproduce.add_argument("--report-only", action="store_true",
                           help="train nothing: write the report from the runs finished so far")
    _add_training_arguments(reproduce, skip=("data",))
    reproduce.set_defaults(handler=cmd_reproduce)

    for sub in (train, evaluate, compare, reproduce, predict):
        sub.add_argument("--quiet", action="store_true", help="no progress bar")

    for sub in (segment, demo):
        sub.add_argument("--lam", type=float, default=20.0,
                         help="grid CRF: weight of the Potts term (default 20, the best on GrabCut with "
                              "colour-model unaries)")
        sub.add_argument("--connectivity", type=int, choices=(4, 8), default=8, help="grid CRF: neighbourhood")
    segment.add_argument("--backend", default=None, choices=list(backends.BACKENDS),
                         help="solver; mean-field segments with a dense CRF, the others with the grid CRF "
                              "(default: the first usable of " + ", ".join(backends.DEFAULT_PREFERENCE[GridCRF]) + ")")
    segment.add_argument("--max-iter", type=int, default=None,
                         help="cap on the solver's iterations (sweeps of moves, mean-field updates)")
    return parser


#: Set for the command line unless the environment says otherwise, before torch (and its OpenMP) loads:
#: threads waiting at an OpenMP barrier sleep instead of spinning, which on a machine busy with other
#: work held the cores the working threads needed (an effnet-lite0 training step on 2 cores at load
#: 3.8: 7.2 s spinning, 1.6 s passive).
OPENMP_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE"}


def main(argv=None):
    for name, value in OPENMP_SETTINGS.items():
        os.environ.setdefault(name, value)
    args = build_parser().parse_args(argv)
    # under torchrun rank 0 prints the results (errors come from every rank, on stderr)
    results = contextlib.nullcontext() if writes_outputs() else contextlib.redirect_stdout(io.StringIO())
    try:
        with results:
            status = args.handler(args)
    except (ValueError, TypeError, ImportError, OSError, FloatingPointError) as exc:
        print(f"admsolve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("admsolve: interrupted" + (" (continue with admsolve train --resume RUN)" if args.command == "train"
                                         else ""), file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
