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

``--device cuda`` times instead both losses (float32) on the CPU, with torch's threads, and on the
GPU (the batch and the images already there; the timing waits for the GPU), the dense one through
CuPy; it prints each loss's speed-up on CUDA (target: the dense loss at least 10x faster than on
the CPU) and checks that the CUDA values and gradients equal the CPU's within float32 rounding
("agreement: FAIL" otherwise, and exit status 1).

    python benchmarks/losses.py [--batch 8] [--labels 21] [--size 256] [--repeats 5] [--data DIR]
                                [--rloss DIR] [--torch-threads N] [--device cpu|cuda]

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
#: CUDA against the CPU, float32: bounds on the relative difference of the loss values, and on the largest
#: difference of a gradient entry relative to the largest gradient entry.
VALUE_BOUND, GRADIENT_BOUND = 1e-4, 1e-3
CUDA_TARGET = 10.0  # the dense loss on CUDA at least this many times faster than on the CPU


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
    """A function computing loss(S, images) and its gradient, returning both (the gradient as the
    tensor's ``grad``); on CUDA it waits for the GPU to finish."""
    def run():
        leaf = probs.detach().requires_grad_(True)
        value = loss(leaf, images)
        value.backward()
        if probs.device.type == "cuda":
            torch.cuda.synchronize(probs.device)
        return value, leaf.grad
    return run


def median_times(runs, repeats):
    """{name: (median wall seconds, median process CPU seconds)} of the functions `runs`, run in turn in each
    of `repeats` rounds after one untimed run each (JIT compilation, first touch)."""
    for run in runs.values():
        run()
    seconds = {name: [] for name in runs}
    cpu_seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            began, cpu_began = time.perf_counter(), time.process_time()
            run()
            seconds[name].append(time.perf_counter() - began)
            cpu_seconds[name].append(time.process_time() - cpu_began)
    return {name: (statistics.median(seconds[name]), statistics.median(cpu_seconds[name])) for name in runs}


def compare_cuda(args, images, probs32):
    """--device cuda: both losses on the CPU and on CUDA, their times and their agreement; 1 if a CUDA
    value or gradient differs from the CPU's beyond the bounds, else 0."""
    from admsolve._array import cuda_status

    status = cuda_status()
    if status is not True or not torch.cuda.is_available():
        print(f"--device cuda: {status if status is not True else 'torch finds no CUDA device'}", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    tensor_images = torch.as_tensor(images).permute(0, 3, 1, 2)
    inputs = {"cpu": (probs32, images, tensor_images),
              "cuda": (probs32.to(device), tensor_images.to(device), tensor_images.to(device))}
    runs = {}
    for place, (probs, dense_images, grid_images) in inputs.items():
        runs[("DenseCRFLoss", place)] = forward_backward(DenseCRFLoss(SXY, SRGB), probs, dense_images)
        runs[("GridCRFLoss (8-connected)", place)] = forward_backward(GridCRFLoss(), probs, grid_images)
    load_before = os.getloadavg()
    times = median_times(runs, args.repeats)
    load_after = os.getloadavg()
    print(f"losses forward + backward, float32, N={args.batch}, K={args.labels}, {args.size}x{args.size} crops of "
          f"{args.data.name}; median of {args.repeats} runs; CPU: {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads; CUDA: {torch.cuda.get_device_name(device)}")
    print(f"load average (1, 5, 15 min): before {', '.join(f'{x:.2f}' for x in load_before)}; "
          f"after {', '.join(f'{x:.2f}' for x in load_after)}")
    header = (f"{'':<28} {'CPU s':>8} {'CUDA s':>8} {'speed-up':>9} {'value rel. diff':>15} "
              f"{'gradient rel. diff':>18}")
    print(header + "\n" + "-" * len(header))
    failed = False
    for name in dict.fromkeys(name for name, _ in runs):
        (cpu_value, cpu_gradient), (cuda_value, cuda_gradient) = (runs[name, place]() for place in inputs)
        value_diff = abs(cuda_value.item() - cpu_value.item()) / abs(cpu_value.item())
        gradient_diff = ((cuda_gradient.cpu() - cpu_gradient).abs().max() / cpu_gradient.abs().max()).item()
        failed |= not (value_diff <= VALUE_BOUND and gradient_diff <= GRADIENT_BOUND)
        speedup = times[name, "cpu"][0] / times[name, "cuda"][0]
        print(f"{name:<28} {times[name, 'cpu'][0]:>8.4f} {times[name, 'cuda'][0]:>8.4f} {speedup:>8.1f}x "
              f"{value_diff:>15.1e} {gradient_diff:>18.1e}")
    speedup = times["DenseCRFLoss", "cpu"][0] / times["DenseCRFLoss", "cuda"][0]
    print(f"target: DenseCRFLoss on CUDA >= {CUDA_TARGET:g}x faster than on the CPU: {speedup:.1f}x "
          f"{'PASS' if speedup >= CUDA_TARGET else 'FAIL'}")
    print(f"agreement: CUDA values within {VALUE_BOUND:g} and gradients within {GRADIENT_BOUND:g} (relative) of "
          f"the CPU's: {'FAIL' if failed else 'PASS'}")
    return 1 if failed else 0


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
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: both losses on the CPU against CUDA (see above)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if not (args.data / "list.txt").is_file():
        print(f"data not found: {args.data}/list.txt is missing", file=sys.stderr)
        return 2
    images = load_crops(args.data, args.batch, args.size)
    probs64 = soft_labels(args.batch, args.labels, args.size)
    probs32 = probs64.to(torch.float32)
    if args.device == "cuda":
        return compare_cuda(args, images, probs32)
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
    times = median_times(runs, args.repeats)
    load_after = os.getloadavg()

    median = {name: wall for name, (wall, _) in times.items()}
    cpu_median = {name: cpu for name, (_, cpu) in times.items()}
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
