"""Benchmark: forward + backward of the dense-CRF loss on a batch of photographs, against rloss's C++ filter.

A batch of N 256 x 256 crops (the centre) of the GrabCut photographs (../shared/data/grabcut, the
first N ids large enough) with soft labels S = softmax of smooth random logits over K = 21 labels,
the bilateral kernel sxy=80, srgb=13. Timed, each as the median of --repeats runs taken in turn
(one configuration after the other in every round, so that a change of the machine's load touches
them alike), after one untimed run (JIT compilation):

* ``DenseCRFLoss`` forward + backward in float32 with its default threads, and with one;
* the same in float64 on one thread: the "previous serial float64" reference;
* rloss's ``bilateralfilter_batch`` (OpenMP over the images, float32): the forward filter of its
  ``DenseCRFLoss``, whose backward reuses the filtered S (it assumes W symmetric), so this is its
  whole forward + backward cost but a dot product; skipped, with the reason, when the module is not
  importable;
* ``GridCRFLoss`` (8-connected) forward + backward in float32, for scale.

Printed: the median wall time of each, its ratio to rloss's and to the float64 serial one, and
the median CPU time of the process (all threads; on a machine shared with other jobs the wall time
also measures their load); the relative difference of the float32 loss from the float64 one on
this batch; the machine's load average before and after; and the target (issue 10): the float32
DenseCRFLoss at most 1.0x rloss's filter time.

    python benchmarks/losses.py [--batch 8] [--labels 21] [--size 256] [--repeats 5] [--data DIR]
                                [--rloss DIR] [--torch-threads N]

rloss's filter is not part of admsolve. To build it (a SWIG wrapper of a small C++ permutohedral
lattice, https://github.com/meng-tang/rloss, folder pytorch/wrapper/bilateralfilter, as its
pytorch/README.md says) somewhere outside the project::

    git clone https://github.com/meng-tang/rloss /tmp/rloss
    cd /tmp/rloss/pytorch/wrapper/bilateralfilter
    pip install swig
    swig -python -c++ bilateralfilter.i
    # its numpy.i predates Python 3, and setup.py compiles with -fopenmp but does not link libgomp:
    CPPFLAGS="-DPyInt_Check=PyLong_Check -DPyString_Check=PyUnicode_Check" LDFLAGS=-fopenmp \\
        python setup.py build_ext --inplace

then run with ``PYTHONPATH=/tmp/rloss/pytorch/wrapper/bilateralfilter`` (or ``--rloss DIR``).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from admsolve.data.io import read_image
from admsolve.training import DenseCRFLoss, GridCRFLoss

GRABCUT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "grabcut"
SXY, SRGB = 80.0, 13.0


def load_crops(folder, count, size):
    """(count, size, size, 3) uint8 centre crops of the first images of `folder` (list.txt order)
    whose sides are at least `size`."""
    crops = []
    for image_id in (folder / "list.txt").read_text().split():
        path = next((folder / "images").glob(f"{image_id}.*"))
        image = read_image(path)
        height, width = image.shape[:2]
        if min(height, width) >= size:
            top, left = (height - size) // 2, (width - size) // 2
            crops.append(image[top:top + size, left:left + size])
        if len(crops) == count:
            return np.stack(crops)
    raise SystemExit(f"data: only {len(crops)} images of {folder} are at least {size} x {size}, {count} wanted")


def soft_labels(count, labels, size, seed=0):
    """(count, labels, size, size) float64 softmax of random logits smooth over 16-pixel cells."""
    coarse = 3.0 * torch.randn(count, labels, size // 16, size // 16, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).softmax(1)


def rloss_filter(images, probs, directory):
    """A function running rloss's ``bilateralfilter_batch`` on the batch (inputs flattened once,
    outside the timing), or the reason it cannot run."""
    if directory:
        sys.path.insert(0, directory)
    try:
        from bilateralfilter import bilateralfilter_batch
    except ImportError as error:
        return f"rloss's bilateralfilter is not importable ({error}); see the module docstring to build it"
    n, k, height, width = probs.shape
    flat_images = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32).ravel()
    flat_probs = probs.to(torch.float32).contiguous().numpy().ravel()
    out = np.zeros_like(flat_probs)
    return lambda: bilateralfilter_batch(flat_images, flat_probs, out, n, k, height, width, SRGB, SXY)


def forward_backward(loss, probs, images):
    """A function computing loss(S, images) and its gradient."""
    def run():
        leaf = probs.detach().requires_grad_(True)
        loss(leaf, images).backward()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=GRABCUT, help="a dataset folder (list.txt, images/)")
    parser.add_argument("--rloss", help="folder of rloss's built bilateralfilter module")
    parser.add_argument("--torch-threads", type=int, help="torch's intra-op threads (default: torch's own); "
                        "on a machine busy with other jobs its idle threads spin and take CPU from the rest")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if not (args.data / "list.txt").is_file():
        print(f"data not found: {args.data}/list.txt is missing", file=sys.stderr)
        return 2
    images = load_crops(args.data, args.batch, args.size)
    probs64 = soft_labels(args.batch, args.labels, args.size)
    probs32 = probs64.to(torch.float32)
    tensor_images = torch.as_tensor(images).permute(0, 3, 1, 2)
    threads = os.cpu_count()
    runs = {
        f"DenseCRFLoss float32, {threads} threads": forward_backward(DenseCRFLoss(SXY, SRGB), probs32, images),
        "DenseCRFLoss float32, 1 thread": forward_backward(DenseCRFLoss(SXY, SRGB, workers=1), probs32, images),
        "DenseCRFLoss float64, 1 thread (previous)": forward_backward(DenseCRFLoss(SXY, SRGB, workers=1),
                                                                       probs64, images),
    }
    rloss = rloss_filter(images, probs32, args.rloss)
    if callable(rloss):
        runs[f"rloss bilateralfilter_batch, OpenMP ({min(threads, args.batch)} threads)"] = rloss
    runs["GridCRFLoss float32 (8-connected)"] = forward_backward(GridCRFLoss(), probs32, tensor_images)

    value32 = DenseCRFLoss(SXY, SRGB)(probs32, images).item()
    value64 = DenseCRFLoss(SXY, SRGB)(probs64, images).item()
    load_before = os.getloadavg()
    for run in runs.values():  # untimed: JIT compilation, first touch
        run()
    seconds = {name: [] for name in runs}
    cpu_seconds = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            began, cpu_began = time.perf_counter(), time.process_time()
            run()
            seconds[name].append(time.perf_counter() - began)
            cpu_seconds[name].append(time.process_time() - cpu_began)
    load_after = os.getloadavg()

    median = {name: statistics.median(values) for name, values in seconds.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu_seconds.items()}
    reference = median["DenseCRFLoss float64, 1 thread (previous)"]
    rloss_name = next((name for name in runs if name.startswith("rloss")), None)
    print(f"dense-CRF loss forward + backward, N={args.batch}, K={args.labels}, {args.size}x{args.size} "
          f"crops of {args.data.name}, sxy={SXY:g}, srgb={SRGB:g}; median of {args.repeats} runs; "
          f"{threads} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads")
    print(f"load average (1, 5, 15 min): before {', '.join(f'{x:.2f}' for x in load_before)}; "
          f"after {', '.join(f'{x:.2f}' for x in load_after)}")
    header = f"{'':<52} {'s / fwd+bwd':>11} {'vs rloss':>8} {'vs f64 serial':>13} {'CPU s':>6}"
    print(header + "\n" + "-" * len(header))
    for name, value in median.items():
        versus_rloss = f"{value / median[rloss_name]:.2f}x" if rloss_name else "-"
        print(f"{name:<52} {value:>11.3f} {versus_rloss:>8} {value / reference:>12.2f}x {cpu_median[name]:>6.3f}")
    if not rloss_name:
        print(f"rloss skipped: {rloss}")
    print(f"float32 loss {value32:.8g} vs float64 {value64:.8g}: relative difference "
          f"{abs(value32 - value64) / abs(value64):.1e} (bound 1e-4)")
    if rloss_name:
        ratio = median[next(iter(runs))] / median[rloss_name]
        print(f"target: DenseCRFLoss float32 <= 1.0x rloss's filter: {ratio:.2f}x "
              f"{'PASS' if ratio <= 1.0 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
