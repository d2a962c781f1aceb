"""Benchmark: the relaxed-gd backend's accelerated method against the plain fixed-step one (the method
before issue 13), on GrabCut and on synthetic grid CRFs.

For each problem both methods start from the argmin of the unaries and run until converged (tol 1e-7,
the default) or 10 000 iterations (the plain method's former cap), recording the relaxed energy R and
the time after every iteration (``callback``), with ``history="ends"`` (no reference energy per
iteration, for either). Printed: the plain method's iterations, time and final R; the iterations and
time the accelerated method takes to reach that R (or "-" if it stops above it), and its own final R
and iterations; the reference energies of both results.

Problems: per GrabCut image (resized like benchmarks/solvers.py) the GridCRF of benchmarks/solvers.py
(-log of a smooth random softmax, scribbles as seeds, contrast weights, lambda 2) for each K of
--labels, and the command line's interactive problem (colour-model unaries from the scribbles, K = 2,
lambda 1); then --synthetic random problems (blocky noisy images, exponential unaries, 2 % seeds).

    python benchmarks/relaxed_gd.py [--images 2] [--sizes 321] [--labels 2 5] [--connectivity 8]
                                    [--synthetic 4] [--max-iter 10000]
"""

import argparse
import os
import sys
import time

import numpy as np

import admsolve as adm
from solvers import DATA, image_ids, load_image, make_problem


def run(problem, method, max_iter):
    """(result, times, values): the result of solve() and the time and R after each iteration."""
    times, values = [], []
    began = time.perf_counter()

    def record(iteration, value):
        times.append(time.perf_counter() - began)
        values.append(value)

    result = adm.solve(problem, "relaxed-gd", method=method, max_iter=max_iter, history="ends", callback=record)
    return result, times, values


def synthetic_problem(seed, size=64):
    rng = np.random.default_rng(seed)
    n_labels = [2, 3, 5][seed % 3]
    image = np.kron(rng.integers(0, 256, (size // 8 + 1, size // 8 + 1, 3)), np.ones((8, 8, 1)))[:size, :size]
    image = np.clip(image + rng.normal(0, 15, image.shape), 0, 255)
    unary = rng.exponential(1.0, (size, size, n_labels))
    seeds = np.where(rng.random((size, size)) < 0.02, rng.integers(0, n_labels, (size, size)), 255)
    return adm.GridCRF(unary, adm.contrast_weights(image, connectivity=8), lam=[0.5, 1.5, 3.0][seed % 3], seeds=seeds)


def problems(args):
    ids = image_ids(args.images) or []
    if not ids:
        print(f"GrabCut data not found ({DATA}/list.txt): synthetic problems only", file=sys.stderr)
    for size in args.sizes:
        for image_id in ids:
            image, scribbles = load_image(image_id, size)
            for n_labels in args.labels:
                for connectivity in args.connectivity:
                    yield (f"{image_id} {size} K={n_labels} c{connectivity}",
                           make_problem(image, scribbles, image_id, n_labels, connectivity))
            unary = adm.scribble_unary(image, scribbles)
            yield (f"{image_id} {size} colour K=2",
                   adm.GridCRF(unary, adm.contrast_weights(image, connectivity=8), lam=1.0, seeds=scribbles))
    for seed in range(args.synthetic):
        yield f"synthetic {seed} 64 K={[2, 3, 5][seed % 3]}", synthetic_problem(seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[321])
    parser.add_argument("--labels", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--connectivity", type=int, nargs="+", default=[8])
    parser.add_argument("--synthetic", type=int, default=4)
    parser.add_argument("--max-iter", type=int, default=10_000)
    args = parser.parse_args()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"relaxed-gd, plain (fixed step) vs accelerated; tol 1e-7, cap {args.max_iter}; load average {load} "
          f"on {os.cpu_count()} CPUs; wall-clock seconds")
    header = (f"{'problem':>26} | {'plain: it':>9} {'s':>7} {'final R':>12} | {'accel: reach it':>15} {'s':>6} "
              f"{'speed-up':>8} | {'final it':>8} {'s':>6} {'final R':>12} | {'E plain':>11} {'E accel':>11}")
    print(header + "\n" + "-" * len(header))
    speedups, lower = [], 0
    count = 0
    for name, problem in problems(args):
        plain, plain_times, plain_values = run(problem, "fixed", args.max_iter)
        accel, accel_times, accel_values = run(problem, "accelerated", args.max_iter)
        target = plain.relaxed_history[-1]
        reach = next((i for i, v in enumerate(accel_values) if v <= target), None)
        if reach is None:
            reached = f"{'-':>15} {'-':>6} {'-':>8}"
        else:
            speedup = plain_times[-1] / accel_times[reach]
            speedups.append(speedup)
            reached = f"{reach + 1:>15} {accel_times[reach]:>6.2f} {speedup:>7.0f}x"
        lower += accel.relaxed_history[-1] <= target
        count += 1
        print(f"{name:>26} | {plain.sweeps:>9} {plain_times[-1]:>7.2f} {target:>12.3f} | {reached} | "
              f"{accel.sweeps:>8} {accel_times[-1]:>6.2f} {accel.relaxed_history[-1]:>12.3f} | "
              f"{plain.energy:>11.3f} {accel.energy:>11.3f}", flush=True)
    print()
    if speedups:
        print(f"accelerated reaches the plain method's final relaxed energy on {len(speedups)} of {count} problems, "
              f"median speed-up {np.median(speedups):.0f}x (min {min(speedups):.0f}x); its own final R is lower or "
              f"equal on {lower} of {count}")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at end {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
