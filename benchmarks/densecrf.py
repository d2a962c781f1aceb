"""Benchmark: the dense-CRF mean-field of admsolve against pydensecrf on GrabCut.

Same unaries as benchmarks/solvers.py (-log of a smooth random softmax, K labels), the image's
bilateral kernel (sxy=80, srgb=13, compat=10) plus a Gaussian kernel (sxy=3, compat=3), 5 mean-field
iterations, no seeds (pydensecrf has no hard constraints). Times: model set-up (lattices) +
inference, median of --repeats runs; `solve` adds the per-iteration reference energies.

    python benchmarks/densecrf.py [--images 3] [--sizes 321 513] [--labels 21] [--repeats 3]
"""

import argparse
import statistics
import sys
import time

import numpy as np

import admsolve as adm
from admsolve.backends.mean_field import mean_field
from solvers import DATA, image_ids, load_image, make_problem

KERNELS = dict(sxy=80, srgb=13, compat=10, gaussian_sxy=3, gaussian_compat=3)


def pydensecrf_labels(unary, image, iterations):
    import pydensecrf.densecrf as dcrf

    height, width, n_labels = unary.shape
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(-1, n_labels).T, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=KERNELS["gaussian_sxy"], compat=KERNELS["gaussian_compat"])
    crf.addPairwiseBilateral(sxy=KERNELS["sxy"], srgb=KERNELS["srgb"], rgbim=np.array(image, dtype=np.uint8, order="C"),
                             compat=KERNELS["compat"])
    q = np.array(crf.inference(iterations))
    return q.argmax(axis=0).reshape(height, width)


def timed(function, repeats):
    """(median seconds, last result) of `repeats` calls."""
    seconds, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[321, 513])
    parser.add_argument("--labels", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ids = image_ids(args.images)
    if ids is None:
        print(f"GrabCut data not found: {DATA}/list.txt is missing", file=sys.stderr)
        return 2
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        print("pydensecrf is not installed: pip install pydensecrf2 (or 'admsolve[bench]')", file=sys.stderr)
        return 2

    print(f"dense CRF, K={args.labels}, {args.iterations} mean-field iterations, {KERNELS}, median of "
          f"{args.repeats} runs; admsolve = DenseCRF(...) set-up + mean-field; solve = the same through "
          f"adm.solve, which also evaluates the reference energy after every iteration")
    header = (f"{'size':>4} {'image':>7} {'pydensecrf (s)':>14} {'admsolve (s)':>12} {'ratio':>6} "
              f"{'solve (s)':>9} {'ratio':>6} {'labels agree':>12}")
    print(header + "\n" + "-" * len(header))
    ratios = {size: [] for size in args.sizes}
    for size in args.sizes:
        for image_id in ids:
            image, scribbles = load_image(image_id, size)
            unary = np.array(make_problem(image, scribbles, image_id, args.labels, 4).unary)
            theirs_time, theirs = timed(lambda: pydensecrf_labels(unary, image, args.iterations), args.repeats)

            def ours():
                problem = adm.DenseCRF(unary, image, **KERNELS)
                return mean_field(problem, iterations=args.iterations)[1].reshape(size, size)

            ours(), pydensecrf_labels(unary, image, 1)  # warm-up: JIT compilation
            ours_time, labels = timed(ours, args.repeats)
            solve_time, _ = timed(lambda: adm.solve(adm.DenseCRF(unary, image, **KERNELS), "mean-field",
                                                    iterations=args.iterations), args.repeats)
            agree = float(np.mean(labels == theirs))
            ratios[size].append(ours_time / theirs_time)
            print(f"{size:>4} {image_id:>7} {theirs_time:>14.3f} {ours_time:>12.3f} {ours_time / theirs_time:>6.2f} "
                  f"{solve_time:>9.3f} {solve_time / theirs_time:>6.2f} {agree:>12.2%}", flush=True)
    for size, values in ratios.items():
        ratio = statistics.median(values)
        print(f"{size}x{size}: median admsolve / pydensecrf = {ratio:.2f}   target <= 1.5: "
              f"{'PASS' if ratio <= 1.5 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
