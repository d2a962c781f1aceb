"""Benchmark: admsolve's solver backends against gco-wrapper's alpha-expansion (GCO v3) on GrabCut.

Every solver minimises the same GridCRF per instance: unaries -log S of a spatially smooth random
softmax S (seeded per image and K), the image's scribbles (labels 0 and 1) as seeds, contrast weights
and lambda = 2. Every energy printed is ``problem.energy(labels)``, admsolve's reference function.

    python benchmarks/solvers.py [--images 3] [--size 321] [--labels 2 5 21] [--connectivity 4 8]
                                 [--sweeps 5] [--repeats 3] [--backends maxflow numba-icm]
"""

import argparse
import importlib.metadata
import os
import platform
import statistics
import sys
import time
import zlib

import numpy as np
from PIL import Image
from scipy import ndimage

import admsolve as adm

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "grabcut")
LAM, GAMMA = 2.0, 1.0
GCO_MAX_TERM = 10_000_000  # GCO_MAX_ENERGYTERM: GCO throws above it, and the wrapper then aborts


def load_image(image_id, size):
    """(size, size, 3) uint8 image (bilinear) and (size, size) scribbles (nearest; 255 = unlabeled)."""
    path = os.path.join(DATA, "images", f"{image_id}.png")
    if not os.path.exists(path):
        path = path[:-4] + ".jpg"
    image = Image.open(path).convert("RGB")
    scribbles = Image.open(os.path.join(DATA, "scribbles_set1", f"{image_id}.png"))
    return (np.asarray(image.resize((size, size), Image.BILINEAR)),
            np.asarray(scribbles.resize((size, size), Image.NEAREST)))


def make_problem(image, scribbles, image_id, n_labels, connectivity):
    """The GridCRF of one instance; S depends only on (image id, K), not on the connectivity."""
    height, width = scribbles.shape
    rng = np.random.default_rng([zlib.crc32(image_id.encode()), n_labels])
    logits = ndimage.gaussian_filter(rng.standard_normal((height, width, n_labels)), sigma=(8, 8, 0))
    logits *= 3.0 / logits.std()
    probs = np.exp(logits - logits.max(axis=2, keepdims=True))
    probs /= probs.sum(axis=2, keepdims=True)
    return adm.GridCRF(adm.adm_unary(probs, gamma=GAMMA), adm.contrast_weights(image, connectivity=connectivity),
                       lam=LAM, seeds=scribbles)


def gco_arrays(problem):
    """GCO's integer inputs: (N, K) data costs, edge ends s1 < s2, edge weights, and the scale s."""
    height, width = problem.shape
    n_labels, n_dirs = problem.n_labels, problem.weights.shape[0]
    data = problem.unary.reshape(-1, n_labels)
    data = data - data.min(axis=1, keepdims=True)  # per-pixel shift: same minimiser, costs >= 0
    pair = problem.lam * problem.weights
    # A wrong label at a seeded pixel saves at most its unary range plus its incident edges' costs.
    prohibitive = 10.0 * (2 * n_dirs * pair.max() + data.max())
    scale = 0.5 * GCO_MAX_TERM / (prohibitive + data.max())  # every data term <= GCO_MAX_TERM / 2
    seeded, seeds = problem.seeded.ravel(), problem.seeds.ravel()
    data[seeded] += prohibitive
    data[seeded, seeds[seeded]] -= prohibitive
    index = np.arange(height * width).reshape(height, width)
    s1, s2, weights = [], [], []
    for d in range(n_dirs):
        dy, dx = adm.OFFSETS[d]
        ys, xs = np.mgrid[0:height - dy, max(0, -dx):width - max(0, dx)]
        p, q = index[ys, xs].ravel(), index[ys + dy, xs + dx].ravel()
        s1.append(np.minimum(p, q))
        s2.append(np.maximum(p, q))
        weights.append(pair[d, ys, xs].ravel())
    return (np.rint(scale * data).astype(np.intc), np.concatenate(s1), np.concatenate(s2),
            np.rint(scale * np.concatenate(weights)).astype(np.intc), scale)


def gco_solve(problem, sweeps, per_sweep=False):
    """Alpha-expansion by gco.GCO from ``problem.initial_labels()``.

    Returns (labels, seconds, history). The time covers the array conversion, graph creation, costs,
    neighbours and expansion, not the label initialisation. With `per_sweep`, expansion(1) is called
    until GCO's own stopping rule (a cycle that leaves its integer energy unchanged) or `sweeps`, and
    history holds the reference energy of the initial labeling and after each sweep.
    GCO's random label order is off by default (m_random_label_order(false); pygco cannot change it),
    so it expands on 0..K-1 in order each sweep, like the maxflow backend.
    """
    import gco

    began = time.perf_counter()
    cost, s1, s2, weights, _ = gco_arrays(problem)
    n_labels = problem.n_labels
    graph = gco.GCO()
    graph.create_general_graph(cost.shape[0], n_labels, energy_is_float=False)
    graph.set_data_cost(cost)
    graph.set_all_neighbors(s1, s2, weights)
    graph.set_smooth_cost((1 - np.eye(n_labels)).astype(np.intc))
    elapsed = time.perf_counter() - began
    init = problem.initial_labels()
    for site, label in enumerate(init.ravel().tolist()):
        graph.init_label_at_site(site, label)
    history = [problem.energy(init)]
    began = time.perf_counter()
    if per_sweep:
        gco_energy = graph.compute_energy()
        while len(history) <= sweeps:
            previous, gco_energy = gco_energy, graph.expansion(1)
            history.append(problem.energy(graph.get_labels().reshape(problem.shape)))
            if gco_energy == previous:
                break
    else:
        graph.expansion(sweeps)
    labels = graph.get_labels().reshape(problem.shape)
    elapsed += time.perf_counter() - began
    graph.destroy_graph()
    return labels, elapsed, history


def sweep_gap(history, reference):
    """max over sweeps >= 1 of (history - reference) / |reference|, the shorter one padded with its last."""
    n = max(len(history), len(reference))
    pad = lambda h: np.array(h + [h[-1]] * (n - len(h)))  # noqa: E731
    a, b = pad(history)[1:], pad(reference)[1:]
    return float(np.max((a - b) / np.abs(b)))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="number of GrabCut images (sorted ids)")
    parser.add_argument("--size", type=int, default=321, help="images are resized to size x size")
    parser.add_argument("--labels", type=int, nargs="+", default=[2, 5, 21], help="values of K (>= 2)")
    parser.add_argument("--connectivity", type=int, nargs="+", default=[4, 8], choices=[4, 8])
    parser.add_argument("--sweeps", type=int, default=5, help="max_sweeps of every solver")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per solver (median reported)")
    parser.add_argument("--backends", nargs="+", help="admsolve backends (default: all available)")
    args = parser.parse_args()
    if min(args.labels) < 2:
        parser.error("--labels: every K must be >= 2 (the scribbles use labels 0 and 1)")
    return args


def main():
    args = parse_args()
    if not os.path.isfile(os.path.join(DATA, "list.txt")):
        print(f"GrabCut data not found: {DATA}/list.txt is missing", file=sys.stderr)
        return 2
    available = [name for name, ok in adm.available_backends().items() if ok is True]
    backends = args.backends or available
    unusable = [name for name in backends if name not in available]
    if unusable:
        print(f"backend(s) not available here: {', '.join(unusable)}", file=sys.stderr)
        return 2
    with open(os.path.join(DATA, "list.txt")) as f:
        ids = sorted(line.strip() for line in f if line.strip())[:args.images]

    version = importlib.metadata.version
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}, numba {version('numba')}, "
          f"PyMaxflow {version('PyMaxflow')}, gco-wrapper {version('gco-wrapper')}, admsolve {adm.__version__}")
    print(f"{len(ids)} GrabCut images at {args.size}x{args.size}, lambda={LAM:g}, gamma={GAMMA:g}, "
          f"max {args.sweeps} sweeps, median of {args.repeats} runs")
    print("time: admsolve = SolveResult.time (the backend's whole minimize call, graph construction and "
          "per-sweep energies included); gco = array conversion + create graph + set costs + neighbours "
          "+ expansion (label initialisation excluded). gap = (E - E_gco) / |E_gco|; sweep gap (gco rows) = "
          "max over sweeps of (E_maxflow - E_gco) / |E_gco|.")

    small_image, small_scribbles = load_image(ids[0], args.size)
    for name in backends:  # warm-up (JIT compilation), on a small crop, for every code path; not reported
        for n_labels in args.labels:
            for connectivity in args.connectivity:
                try:
                    adm.solve(make_problem(small_image[:48, :48], small_scribbles[:48, :48], ids[0], n_labels,
                                           connectivity), name, max_sweeps=args.sweeps)
                except Exception:
                    pass  # reported when the backend fails on a timed instance

    rows, total = [], len(ids) * len(args.labels) * len(args.connectivity)
    for image_id in ids:
        image, scribbles = load_image(image_id, args.size)
        for n_labels in args.labels:
            for connectivity in args.connectivity:
                began = time.perf_counter()
                problem = make_problem(image, scribbles, image_id, n_labels, connectivity)
                labels, _, gco_history = gco_solve(problem, args.sweeps, per_sweep=True)
                times = [gco_solve(problem, args.sweeps)[1] for _ in range(args.repeats)]
                gco_row = dict(image=image_id, K=n_labels, conn=connectivity, backend="gco",
                               sweeps=len(gco_history) - 1, time=statistics.median(times),
                               energy=problem.energy(labels), seeds_ok=not problem.violates_seeds(labels))
                instance = [gco_row]
                for name in backends:
                    try:
                        results = [adm.solve(problem, name, max_sweeps=args.sweeps) for _ in range(args.repeats)]
                    except Exception as exc:  # a broken backend is reported, not fatal to the benchmark
                        error = f"{type(exc).__name__}: {exc}"
                        print(f"  {name} failed on image {image_id} K={n_labels} {connectivity}-conn: {error}",
                              file=sys.stderr)
                        instance.append(dict(image=image_id, K=n_labels, conn=connectivity, backend=name,
                                             error=error))
                        continue
                    result = results[-1]
                    instance.append(dict(image=image_id, K=n_labels, conn=connectivity, backend=name,
                                         sweeps=result.sweeps, time=statistics.median(r.time for r in results),
                                         energy=result.energy, history=result.history,
                                         seeds_ok=not problem.violates_seeds(result.labels)))
                for row in instance:
                    if "error" in row:
                        continue
                    row["ratio"] = row["time"] / gco_row["time"]
                    row["gap"] = (row["energy"] - gco_row["energy"]) / abs(gco_row["energy"])
                    if row["backend"] == "maxflow":
                        gco_row["sweep_gap"] = row["sweep_gap"] = sweep_gap(row["history"], gco_history)
                rows += instance
                print(f"[{len(rows) // len(instance)}/{total}] image {image_id} K={n_labels} "
                      f"{connectivity}-conn: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)

    wide = max(len(name) for name in ["backend", *backends])
    header = (f"{'image':>7} {'K':>3} {'conn':>4} {'backend':<{wide}} {'sweeps':>6} {'time (s)':>9} "
              f"{'x gco':>7} {'energy':>14} {'gap %':>9} {'sweep gap %':>12}")
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        ident = f"{row['image']:>7} {row['K']:>3} {row['conn']:>4} {row['backend']:<{wide}}"
        if "error" in row:
            print(f"{ident} FAILED: {row['error']}")
            continue
        sweep = f"{100 * row['sweep_gap']:+.1e}" if row["backend"] == "gco" and "sweep_gap" in row else ""
        flag = "" if row["seeds_ok"] else "  SEEDS VIOLATED"
        print(f"{ident} {row['sweeps']:>6} {row['time']:>9.3f} {row['ratio']:>7.2f} {row['energy']:>14.3f} "
              f"{100 * row['gap']:>9.4f} {sweep:>12}{flag}")

    print("\nsummary: median over images of time / gco time (and of the energy gap)")
    for n_labels in args.labels:
        for connectivity in args.connectivity:
            group = [r for r in rows if r["K"] == n_labels and r["conn"] == connectivity]
            by = {name: {r["image"]: r for r in group if r["backend"] == name and "error" not in r}
                  for name in backends}
            failed = {name: len(ids) - len(by[name]) for name in backends}
            parts = [f"{name} {statistics.median(r['ratio'] for r in by[name].values()):.2f}x "
                     f"({100 * statistics.median(r['gap'] for r in by[name].values()):+.4f}%)"
                     if by[name] else f"{name} failed" for name in backends]
            print(f"  K={n_labels:<3} {connectivity}-conn: " + ", ".join(parts))
            checks = []
            if "maxflow" in by and failed["maxflow"]:
                checks.append((False, f"maxflow failed on {failed['maxflow']} of {len(ids)} images"))
            elif "maxflow" in by:
                worst = max(r["sweep_gap"] for r in by["maxflow"].values())
                checks.append((worst <= 1e-4, f"maxflow energy within 0.01% of gco at every sweep "
                                              f"(worst {100 * worst:+.1e}%)"))
                limit = 1.5 if connectivity == 4 else 1.0
                ratio = statistics.median(r["ratio"] for r in by["maxflow"].values())
                checks.append((ratio <= limit, f"maxflow time <= {limit}x gco (median {ratio:.2f}x)"))
            both = [i for i in ids if i in by.get("maxflow", {}) and i in by.get("numba-icm", {})]
            if both:
                speedup = statistics.median(by["maxflow"][i]["time"] / by["numba-icm"][i]["time"] for i in both)
                gap = statistics.median(by["numba-icm"][i]["gap"] for i in both)
                checks.append((speedup >= 10, f"numba-icm >= 10x faster than maxflow (median {speedup:.1f}x; "
                                              f"its energy gap to gco {100 * gap:+.3f}%)"))
            for ok, text in checks:
                print(f"    {'PASS' if ok else 'FAIL'}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
