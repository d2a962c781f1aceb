"""Benchmark: the dense-CRF mean-field of admsolve against pydensecrf on GrabCut.

Same unaries as benchmarks/solvers.py (-log of a smooth random softmax, K labels), the image's
bilateral kernel (sxy=80, srgb=13, compat=10) plus a Gaussian kernel (sxy=3, compat=3), 5 mean-field
iterations, no seeds (pydensecrf has no hard constraints). Set-up included everywhere:

* pydensecrf: ``DenseCRF2D`` + ``setUnaryEnergy`` + both kernels + ``inference(5)`` + argmax;
* solve: ``adm.solve(adm.DenseCRF(unary, image, ...), "mean-field", max_iter=5)``, as users call it
  (float32 iterations, the reference energies of the start and the result: ``history="ends"``);
* raw: ``DenseCRF(...)`` + ``backends.mean_field.mean_field(problem, iterations=5)`` (no energies).

The three run in turn within each repeat (so that the machine's load hits them alike); each time is
the median over the repeats, as wall-clock seconds and as the CPU time of the thread (less sensitive
to other processes on a shared machine); the ratios are to pydensecrf in the same run. Also printed:
the share of labels equal to pydensecrf's, and to admsolve's float64 iterations.

``--device cuda`` runs solve (``device="cuda"``: the arrays go to the GPU and the labels come back
inside the timing) and raw (``mean_field_xp`` on CuPy, the labels copied back) on CuPy; pydensecrf
stays on the CPU. The CuPy path iterates in float64, so its labels must equal those of the CPU's
float64 iterations on at least 99.9 % of the pixels (else "agreement: FAIL"); the target is then
at least 20x faster than pydensecrf (ratio <= 0.05).

    python benchmarks/densecrf.py [--images 3] [--sizes 321 513] [--labels 5 21] [--repeats 5]
                                  [--data GRABCUT_DIR] [--device cpu|cuda]
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

import admsolve as adm
from admsolve._array import cuda_status
from admsolve.backends.mean_field import mean_field, mean_field_xp
from solvers import DATA, image_ids, load_image, make_problem

KERNELS = dict(sxy=80, srgb=13, compat=10, gaussian_sxy=3, gaussian_compat=3)
TARGETS = {"cpu": 1.0, "cuda": 0.05}  # the ratio to pydensecrf's time
#: Least share of the CUDA labels equal to the CPU's float64 ones (the CuPy path iterates in float64;
#: its splat's atomic additions sum in any order).
CUDA_AGREEMENT = 0.999


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


def interleaved(functions, repeats):
    """{name: (median wall seconds, median thread CPU seconds, last result)}, the functions run in turn
    within each repeat."""
    wall = {name: [] for name in functions}
    cpu = {name: [] for name in functions}
    results = {}
    for _ in range(repeats):
        for name, function in functions.items():
            began, began_cpu = time.perf_counter(), time.thread_time()
            results[name] = function()
            cpu[name].append(time.thread_time() - began_cpu)
            wall[name].append(time.perf_counter() - began)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name]), results[name]) for name in functions}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[321, 513])
    parser.add_argument("--labels", type=int, nargs="+", default=[5, 21])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=DATA, help="the GrabCut folder (default ../shared/data/grabcut)")
    parser.add_argument("--device", choices=tuple(TARGETS), default="cpu",
                        help="where admsolve's mean-field runs (pydensecrf runs on the CPU)")
    args = parser.parse_args()
    ids = image_ids(args.images, args.data)
    if ids is None:
        print(f"GrabCut data not found: {args.data}/list.txt is missing", file=sys.stderr)
        return 2
    cupy = None
    if args.device == "cuda":
        status = cuda_status()
        if status is not True:
            print(f"--device cuda: {status}", file=sys.stderr)
            return 2
        import cupy
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        print("pydensecrf is not installed: pip install pydensecrf2 (or 'admsolve[bench]')", file=sys.stderr)
        return 2

    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"dense CRF, {args.iterations} mean-field iterations, {KERNELS}, median of {args.repeats} interleaved "
          f"runs, set-up included, admsolve on {args.device}; load average at start {load} on {os.cpu_count()} CPUs")
    print("ratio = time / pydensecrf's in the same run (wall clock, and CPU time of the thread in brackets)")
    header = (f"{'size':>4} {'K':>3} {'image':>7} {'pydensecrf s':>12} {'solve s':>8} {'ratio':>12} {'raw s':>8} "
              f"{'ratio':>12} {'= pydensecrf':>12} {'= float64':>9}")
    print(header + "\n" + "-" * len(header))
    ratios, agreements = {}, []
    for size in args.sizes:
        for n_labels in args.labels:
            for image_id in ids:
                image, scribbles = load_image(image_id, size, args.data)
                unary = np.array(make_problem(image, scribbles, image_id, n_labels, 4).unary)

                def solve():
                    problem = adm.DenseCRF(unary, image, **KERNELS)
                    return adm.solve(problem, "mean-field", max_iter=args.iterations, device=args.device).labels

                def raw():
                    problem = adm.DenseCRF(unary, image, **KERNELS)
                    if cupy is None:
                        return mean_field(problem, iterations=args.iterations)[1]
                    return cupy.asnumpy(mean_field_xp(problem, cupy, iterations=args.iterations)[1])

                functions = {"pydensecrf": lambda: pydensecrf_labels(unary, image, args.iterations),
                             "solve": solve, "raw": raw}
                for function in functions.values():  # warm-up: JIT compilation or loading from the cache
                    function()
                timing = interleaved(functions, args.repeats)
                theirs_wall, theirs_cpu, theirs = timing["pydensecrf"]
                double = adm.solve(adm.DenseCRF(unary, image, **KERNELS), "mean-field", max_iter=args.iterations,
                                   dtype="float64").labels
                row = f"{size:>4} {n_labels:>3} {image_id:>7} {theirs_wall:>12.3f}"
                for name in ("solve", "raw"):
                    wall, cpu, _ = timing[name]
                    ratio, ratio_cpu = wall / theirs_wall, cpu / theirs_cpu
                    ratios.setdefault((size, n_labels, name), []).append((ratio, ratio_cpu))
                    row += f" {wall:>8.3f} {ratio:>5.2f} ({ratio_cpu:.2f})"
                labels = timing["solve"][2]
                row += f" {np.mean(labels == theirs):>12.2%} {np.mean(labels == double):>9.2%}"
                if cupy is not None:
                    agreements.append(min(np.mean(timing[name][2] == double) for name in ("solve", "raw")))
                print(row, flush=True)
    print()
    failed = False
    target = TARGETS[args.device]
    for (size, n_labels, name), values in ratios.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        verdict = "PASS" if wall <= target else "FAIL"
        failed |= name == "solve" and wall > target
        print(f"{size}x{size} K={n_labels:<2} {name:>5}: median ratio {wall:.3f} wall ({1 / wall:.1f}x faster), "
              f"{cpu:.2f} CPU   target <= {target}: {verdict}")
    if agreements:
        agree = min(agreements) >= CUDA_AGREEMENT
        failed |= not agree
        print(f"agreement: CUDA labels = CPU float64 labels on at least {min(agreements):.4%} of the pixels "
              f"(bound {CUDA_AGREEMENT:.1%}): {'PASS' if agree else 'FAIL'}")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at end {load}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
