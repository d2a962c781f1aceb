"""Benchmark: images per second of ``admsolve predict`` (the Predictor it runs), with and without the
dense CRF (``--crf``, DeepLab's settings: 10 mean-field iterations).

Images of GrabCut (from ../shared/data, else random pictures) resized to 512 x 384; the network of a run
(``--run``), or by default an effnet-lite0 with K = 21 labels written to a temporary run folder (its
speed does not depend on what it learned). Torch and Numba on ``--threads`` threads. Each
configuration predicts all the images ``--repeats`` times after one untimed pass (loading, JIT
compilation); the figure is the median over the repeats of images / wall-clock second. Reading and
writing files is not timed.

    python benchmarks/predict.py [--run RUN] [--images 8] [--repeats 3] [--threads 2] [--batch-size 4]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "grabcut"
SIZE = (512, 384)  # width, height


def load_images(count):
    """`count` GrabCut images (random pictures where the data is absent) resized to SIZE."""
    paths = sorted((DATA / "images").glob("*"))[:count] if DATA.is_dir() else []
    images = [np.asarray(Image.open(path).convert("RGB").resize(SIZE, Image.Resampling.BILINEAR)) for path in paths]
    rng = np.random.default_rng(0)
    images += [rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8) for _ in range(count - len(images))]
    return images, "GrabCut" if paths else "random"


def temporary_run(folder, model, n_labels):
    """A run folder holding `model`'s freshly built network: config.json, model.json, checkpoint.pt."""
    import torch

    from admsolve.training import TrainConfig
    from admsolve.training.checkpoints import write_config, write_model_info
    from admsolve.training.models import build_model, input_normalization

    network = build_model(model, n_labels)
    write_config(folder, TrainConfig(data="synthetic", model=model).resolved())
    write_model_info(folder, n_labels=n_labels, class_names=[str(k) for k in range(n_labels)], model=model,
                     normalization=input_normalization(network))
    torch.save({"model": network.state_dict()}, folder / "checkpoint.pt")
    return folder


def images_per_second(predictor, images, repeats):
    predictor.predict(images[:predictor.batch_size])  # untimed: the first call's set-up and compilation
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        for first in range(0, len(images), predictor.batch_size):
            predictor.predict(images[first:first + predictor.batch_size])
        rates.append(len(images) / (time.perf_counter() - began))
    return statistics.median(rates), min(rates), max(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a run folder (default: a fresh effnet-lite0 of --labels labels)")
    parser.add_argument("--model", default="effnet-lite0")
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line sets it
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    import torch

    from admsolve.training import Predictor

    torch.set_num_threads(args.threads)
    images, source = load_images(args.images)
    with tempfile.TemporaryDirectory() as folder:
        run = Path(args.run) if args.run else temporary_run(Path(folder), args.model, args.labels)
        info = json.loads((run / "model.json").read_text())
        print(f"{len(images)} {source} images of {SIZE[0]}x{SIZE[1]}, {info['model']} with K = {info['n_labels']}, "
              f"{args.threads} threads, batch {args.batch_size}, median of {args.repeats}; "
              f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
        print("| configuration | images/s (median) | min–max |\n|---|---|---|")
        for name, crf in (("network", None), ("network + --crf", True)):
            predictor = Predictor(run, checkpoint="last", batch_size=args.batch_size, crf=crf)
            median, low, high = images_per_second(predictor, images, args.repeats)
            print(f"| {name} | {median:.2f} | {low:.2f}–{high:.2f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", file=sys.stderr)


if __name__ == "__main__":
    main()
