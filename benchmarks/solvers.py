"""Benchmark: admsolve's solver backends against gco-wrapper's alpha-expansion (GCO v3) on GrabCut.

Every solver minimises the same GridCRF per instance: unaries -log S of a spatially smooth random
softmax S (seeded per image and K), the image's scribbles (labels 0 and 1) as seeds, contrast weights
and lambda = 2. Every energy printed is ``problem.energy(labels)``, admsolve's reference function.

    python benchmarks/solvers.py [--images 3] [--sizes 321] [--labels 2 5 21] [--connectivity 4 8]
                                 [--sweeps 5] [--repeats 3] [--backends maxflow numba-icm] [--no-extras]
                                 [--memory-sizes 1024 2048]

After the main table come the extras (skipped with --no-extras): batch throughput of solve_batch, ADM's
latent step compiled against built in Python (needs torch), expansion restricted to a label subset, and
the Numba JIT compile and cached start-up times.
--memory-sizes adds, for each size, gco against numba-expansion's memory layouts on the first image
(K = the largest of --labels, 8-connected): time and peak memory beyond the problem's arrays, each
solver in a process of its own.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
from PIL import Image
from scipy import ndimage

# measure the checkout this script is in, not whichever admsolve is installed (an editable install
# may point at another worktree)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import admsolve as adm  # noqa: E402
from admsolve.cli import OPENMP_SETTINGS  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "grabcut")
LAM, GAMMA = 2.0, 1.0
GCO_MAX_TERM = 10_000_000  # GCO_MAX_ENERGYTERM: GCO throws above it, and the wrapper then aborts


def image_ids(count, folder=DATA):
    """The first `count` GrabCut ids (sorted) of `folder`, or None where the data is absent."""
    path = os.path.join(folder, "list.txt")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return sorted(line.strip() for line in f if line.strip())[:count]


def load_image(image_id, size, folder=DATA):
    """(size, size, 3) uint8 image (bilinear) and (size, size) scribbles (nearest; 255 = unlabeled) of the
    GrabCut folder `folder`."""
    path = os.path.join(folder, "images", f"{image_id}.png")
    if not os.path.exists(path):
        path = path[:-4] + ".jpg"
    image = Image.open(path).convert("RGB")
    scribbles = Image.open(os.path.join(folder, "scribbles_set1", f"{image_id}.png"))
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
    parser.add_argument("--sizes", type=int, nargs="+", default=[321], help="images are resized to size x size")
    parser.add_argument("--labels", type=int, nargs="+", default=[2, 5, 21], help="values of K (>= 2)")
    parser.add_argument("--connectivity", type=int, nargs="+", default=[4, 8], choices=[4, 8])
    parser.add_argument("--sweeps", type=int, default=5, help="max_sweeps of every solver but relaxed-gd")
    parser.add_argument("--gd-iterations", type=int, default=50, help="max_sweeps (iterations) of relaxed-gd")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per solver (median reported)")
    parser.add_argument("--backends", nargs="+", help="admsolve backends (default: all available)")
    parser.add_argument("--no-extras", action="store_true", help="only the main table")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[],
                        help="sizes at which to measure time and peak memory of gco and the expansion layouts")
    args = parser.parse_args()
    if min(args.labels) < 2:
        parser.error("--labels: every K must be >= 2 (the scribbles use labels 0 and 1)")
    return args


def sweeps_of(name, args):
    """max_sweeps for backend `name`: an iteration of relaxed GD is far cheaper than a sweep of moves."""
    return args.gd_iterations if name == "relaxed-gd" else args.sweeps


def warm_up(backends, image_id, args):
    """Compile every backend's code paths on a small crop; nothing from this is reported."""
    image, scribbles = load_image(image_id, 48)
    for name in backends:
        for n_labels in args.labels:
            for connectivity in args.connectivity:
                try:
                    adm.solve(make_problem(image, scribbles, image_id, n_labels, connectivity), name,
                              max_sweeps=sweeps_of(name, args))
                except Exception:
                    pass  # reported when the backend fails on a timed instance


def measure_instance(problem, key, backends, args):
    """Rows for gco and every backend on one problem; times are medians of --repeats runs."""
    labels, _, gco_history = gco_solve(problem, args.sweeps, per_sweep=True)
    times = [gco_solve(problem, args.sweeps)[1] for _ in range(args.repeats)]
    gco_row = dict(key, backend="gco", sweeps=len(gco_history) - 1, time=statistics.median(times),
                   energy=problem.energy(labels), seeds_ok=not problem.violates_seeds(labels))
    rows = [gco_row]
    for name in backends:
        try:
            results = [adm.solve(problem, name, max_sweeps=sweeps_of(name, args)) for _ in range(args.repeats)]
        except Exception as exc:  # a broken backend is reported, not fatal to the benchmark
            rows.append(dict(key, backend=name, error=f"{type(exc).__name__}: {exc}"))
            print(f"  {name} failed on {key}: {rows[-1]['error']}", file=sys.stderr)
            continue
        result = results[-1]
        rows.append(dict(key, backend=name, sweeps=result.sweeps, time=statistics.median(r.time for r in results),
                         energy=result.energy, history=result.history,
                         seeds_ok=not problem.violates_seeds(result.labels)))
    for row in rows:
        if "error" not in row:
            row["ratio"] = row["time"] / gco_row["time"]
            row["gap"] = (row["energy"] - gco_row["energy"]) / abs(gco_row["energy"])
            if row["backend"] in ("maxflow", "numba-expansion"):
                row["sweep_gap"] = sweep_gap(row["history"], gco_history)
    return rows


def print_table(rows, backends):
    wide = max(len(name) for name in ["backend", *backends])
    header = (f"{'size':>4} {'image':>7} {'K':>3} {'conn':>4} {'backend':<{wide}} {'sweeps':>6} {'time (s)':>9} "
              f"{'x gco':>7} {'energy':>14} {'gap %':>9} {'sweep gap %':>12}")
    print("\n" + header + "\n" + "-" * len(header))
    for row in rows:
        ident = f"{row['size']:>4} {row['image']:>7} {row['K']:>3} {row['conn']:>4} {row['backend']:<{wide}}"
        if "error" in row:
            print(f"{ident} FAILED: {row['error']}")
            continue
        sweep = f"{100 * row['sweep_gap']:+.1e}" if "sweep_gap" in row else ""
        flag = "" if row["seeds_ok"] else "  SEEDS VIOLATED"
        print(f"{ident} {row['sweeps']:>6} {row['time']:>9.3f} {row['ratio']:>7.2f} {row['energy']:>14.3f} "
              f"{100 * row['gap']:>9.4f} {sweep:>12}{flag}")


def print_summary(rows, backends, args, n_images):
    """Median ratios per (size, K, connectivity) and the targets of the issues, PASS or FAIL."""
    print("\nsummary: median over images of time / gco time (and of the energy gap); sweep gap = worst over "
          "sweeps of (E - E_gco) / |E_gco|")
    for size in args.sizes:
        for n_labels in args.labels:
            for connectivity in args.connectivity:
                group = [r for r in rows if (r["size"], r["K"], r["conn"]) == (size, n_labels, connectivity)]
                by = {name: {r["image"]: r for r in group if r["backend"] == name and "error" not in r}
                      for name in backends}
                parts = [f"{name} {statistics.median(r['ratio'] for r in by[name].values()):.2f}x "
                         f"({100 * statistics.median(r['gap'] for r in by[name].values()):+.4f}%)"
                         if by[name] else f"{name} failed" for name in backends]
                print(f"  {size}x{size} K={n_labels:<3} {connectivity}-conn: " + ", ".join(parts))
                for ok, text in targets(by, n_images, connectivity):
                    print(f"    {'PASS' if ok else 'FAIL'}  {text}")


def targets(by, n_images, connectivity):
    """(passed, description) of each target that the backends measured here can be checked against."""
    checks = []
    for name, time_limit in (("maxflow", 1.5 if connectivity == 4 else 1.0), ("numba-expansion", 0.5)):
        if name not in by:
            continue
        if len(by[name]) < n_images:
            checks.append((False, f"{name} failed on {n_images - len(by[name])} of {n_images} images"))
            continue
        worst = max(r["sweep_gap"] for r in by[name].values())
        checks.append((worst <= 1e-4, f"{name} energy within 0.01% of gco at every sweep (worst {100 * worst:+.1e}%)"))
        ratio = statistics.median(r["ratio"] for r in by[name].values())
        checks.append((ratio <= time_limit, f"{name} time <= {time_limit}x gco (median {ratio:.2f}x)"))
    both = [i for i in by.get("maxflow", {}) if i in by.get("numba-icm", {})]
    if both:
        speedup = statistics.median(by["maxflow"][i]["time"] / by["numba-icm"][i]["time"] for i in both)
        gap = statistics.median(by["numba-icm"][i]["gap"] for i in both)
        checks.append((speedup >= 10, f"numba-icm >= 10x faster than maxflow (median {speedup:.1f}x; "
                                      f"its energy gap to gco {100 * gap:+.3f}%)"))
    return checks


def batch_section(ids, args):
    """Throughput of solve_batch on 8 problems (321x321, K=21, 8-connected): workers=1 vs 2, and against gco
    solving them one after another (target: numba-expansion with 2 workers <= 0.2x gco's time)."""
    size, n_labels = 321, 21
    image, scribbles = load_image(ids[0], size)
    problems = [make_problem(image, scribbles, f"{ids[0]}-{i}", n_labels, 8) for i in range(8)]
    print(f"\nsolve_batch: 8 problems {size}x{size}, K={n_labels}, 8-conn, max {args.sweeps} sweeps, "
          f"{os.cpu_count()} CPUs")
    gco_seconds = sum(gco_solve(problem, args.sweeps)[1] for problem in problems)
    print(f"  {'gco':16s} one after another {gco_seconds:6.2f} s")
    for name in ("numba-expansion", "maxflow", "numba-icm"):
        if adm.available_backends().get(name) is not True:
            continue
        seconds = {}
        for workers in (1, 2):
            began = time.perf_counter()
            adm.solve_batch(problems, name, workers=workers, max_sweeps=args.sweeps)
            seconds[workers] = time.perf_counter() - began
        speedup, ratio = seconds[1] / seconds[2], seconds[2] / gco_seconds
        verdict = f"   target <= 0.2x gco: {'PASS' if ratio <= 0.2 else 'FAIL'}" if name == "numba-expansion" else ""
        print(f"  {name:16s} 1 worker {seconds[1]:6.2f} s, 2 workers {seconds[2]:6.2f} s: "
              f"throughput x{speedup:.2f}, 2 workers {ratio:.2f}x gco{verdict}")
    small_batches(ids, args)


def small_batches(ids, args):
    """8 problems of 48x48 and 96x96 (K = 3 and 21, 8-connected): 1 worker against 2, median of 20 runs;
    target: 2 workers no slower (below a backend's threads_from, solve_batch solves in the calling thread)."""
    for n_labels in (3, 21):
        for size in (48, 96):
            image, scribbles = load_image(ids[0], size)
            problems = [make_problem(image, scribbles, f"{ids[0]}-{i}", n_labels, 8) for i in range(8)]
            parts = []
            for name in ("numba-expansion", "numba-icm"):
                seconds = {}
                for workers in (1, 2):
                    adm.solve_batch(problems, name, workers=workers, max_sweeps=args.sweeps)
                    times = []
                    for _ in range(20):
                        began = time.perf_counter()
                        adm.solve_batch(problems, name, workers=workers, max_sweeps=args.sweeps)
                        times.append(time.perf_counter() - began)
                    seconds[workers] = statistics.median(times)
                verdict = "PASS" if seconds[2] <= 1.05 * seconds[1] else "FAIL"
                parts.append(f"{name} {1e3 * seconds[1]:.1f} / {1e3 * seconds[2]:.1f} ms ({verdict})")
            print(f"  8 x {size}x{size}, K={n_labels}, 8-conn, 1 / 2 workers: " + ", ".join(parts))


def latent_section(ids, args):
    """ADM's latent step (ADMStep, grid regularizer, 8-connected, lambda 2, gamma 1, max --sweeps sweeps) on
    a batch of 8 GrabCut images with smooth random probabilities: built and solved in one compiled call per
    thread (the default) against building each GridCRF in Python and solving them with solve_batch (itself one
    compiled call per thread): what building the problems in compiled code gains; median batch time, 1 and 2
    workers."""
    try:
        import torch
        from admsolve.training import ADMStep
    except ImportError:
        print("\nADM latent step: skipped (needs torch: pip install 'admsolve[train]')")
        return
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"\nADM latent step, 8 images, 8-conn, max {args.sweeps} sweeps: compiled / built in Python + solve_batch "
          f"(OMP_WAIT_POLICY={policy}: torch's waiting OpenMP threads "
          + ("sleep)" if policy.upper() == "PASSIVE" else "may spin on the cores the solver threads need)"))
    for size, n_labels, repeats in ((48, 3, 30), (96, 3, 20), (224, 21, 5), (321, 21, 3)):
        loaded = [load_image(image_id, size) for image_id in (ids * 8)[:8]]
        images = np.stack([image for image, _ in loaded])
        scribbles = torch.from_numpy(np.stack([scribble for _, scribble in loaded]).astype(np.int64))
        probs = torch.from_numpy(np.stack([
            np.exp(-make_problem(image, scribble, f"{image_id}-{i}", n_labels, 8).unary / GAMMA)
            for i, ((image, scribble), image_id) in enumerate(zip(loaded, (ids * 8)[:8]))]).astype(np.float32))
        probs = probs.permute(0, 3, 1, 2).contiguous()
        parts = []
        for workers in (1, 2):
            step = ADMStep(lam=LAM, gamma=GAMMA, max_iter=args.sweeps, workers=workers)
            compiled = lambda: step(probs, images, scribbles)  # noqa: E731
            in_python = lambda: step._solve_problems(  # noqa: E731
                step._latent_inputs(step._checked(probs, images, scribbles, None)))
            seconds = {}
            for name, run in (("compiled", compiled), ("python", in_python)):
                run()
                times = []
                for _ in range(repeats):
                    began = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - began)
                seconds[name] = statistics.median(times)
            parts.append(f"{workers} worker{'s' if workers > 1 else ''} {1e3 * seconds['compiled']:.1f} / "
                         f"{1e3 * seconds['python']:.1f} ms ({seconds['compiled'] / seconds['python']:.2f}x)")
        print(f"  8 x {size}x{size}, K={n_labels}: " + ", ".join(parts))


def subset_section(ids, args):
    """Expansion over 3 of 21 labels (those present, as ADM would choose) vs over all 21."""
    size, n_labels = 321, 21
    print(f"\nlabels= subset: {size}x{size}, K={n_labels}, the network favours labels 0, 1, 2 (the others "
          f"have logits lowered by 6); expansion on labels [0, 1, 2] vs on all")
    for image_id in ids:
        image, scribbles = load_image(image_id, size)
        for connectivity in args.connectivity:
            base = make_problem(image, scribbles, image_id, n_labels, connectivity)
            unary = np.array(base.unary)
            unary[..., 3:] += 6.0  # -log S: lowering a logit by 6 raises the unary by about 6
            problem = adm.GridCRF(unary, base.weights, lam=base.lam, seeds=base.seeds)
            for name in ("numba-expansion", "maxflow"):
                if adm.available_backends().get(name) is not True:
                    continue
                full = [adm.solve(problem, name, max_sweeps=args.sweeps) for _ in range(args.repeats)]
                part = [adm.solve(problem, name, max_sweeps=args.sweeps, labels=[0, 1, 2])
                        for _ in range(args.repeats)]
                t_full = statistics.median(r.time for r in full)
                t_part = statistics.median(r.time for r in part)
                gap = (part[-1].energy - full[-1].energy) / abs(full[-1].energy)
                verdict = f"   target >= 5x: {'PASS' if t_full / t_part >= 5 else 'FAIL'}" \
                    if name == "numba-expansion" else ""
                print(f"  {image_id} {connectivity}-conn {name:16s} all {t_full:6.3f} s, subset {t_part:6.3f} s: "
                      f"x{t_full / t_part:5.1f} faster, energy {100 * gap:+.4f}% vs all{verdict}")


MEMORY_CHILD = """
import json, sys, time
sys.path[:0] = sys.argv[1:3]
import solvers
import admsolve as adm
image_id, size, n_labels, sweeps, solver = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
problem = solvers.make_problem(*solvers.load_image(image_id, size), image_id, n_labels, 8)
small = solvers.make_problem(*solvers.load_image(image_id, 48), image_id, n_labels, 8)
if solver == "gco":
    solvers.gco_solve(small, sweeps)
else:
    adm.solve(small, "numba-expansion", max_iter=sweeps, memory=solver)  # compiled, or loaded from the cache
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) restarts from the current resident size
if solver == "gco":
    labels, seconds, _ = solvers.gco_solve(problem, sweeps)
    message = ""
else:
    result = adm.solve(problem, "numba-expansion", max_iter=sweeps, memory=solver)
    labels, seconds, message = result.labels, result.time, result.message
print(json.dumps({"seconds": seconds, "peak": status("VmHWM:") - before, "energy": problem.energy(labels),
                  "message": message}))
"""


def memory_section(ids, args):
    """Time and peak memory beyond the problem's arrays (resident set: the peak during the solve minus
    the size before it, the problem built), gco against numba-expansion's layouts, each in a new process."""
    n_labels = max(args.labels)
    here = os.path.dirname(os.path.abspath(__file__))
    for size in args.memory_sizes:
        print(f"\nmemory: {size}x{size}, K={n_labels}, 8-conn, image {ids[0]}, max {args.sweeps} sweeps; peak "
              f"resident memory beyond the problem's arrays, each solver in a new process")
        rows = {}
        for solver in ("gco", "fast", "lean", "auto"):
            done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, here, os.path.dirname(here), ids[0], str(size),
                                   str(n_labels), str(args.sweeps), solver], check=True, capture_output=True, text=True)
            rows[solver] = row = json.loads(done.stdout.strip().splitlines()[-1])
            name = "gco" if solver == "gco" else f"numba-expansion memory={solver!r}"
            gap = (row["energy"] - rows["gco"]["energy"]) / abs(rows["gco"]["energy"])
            print(f"  {name:32s} {row['seconds']:7.2f} s ({row['seconds'] / rows['gco']['seconds']:.2f}x gco), "
                  f"peak +{row['peak'] / 2**20:6.0f} MiB ({row['peak'] / rows['gco']['peak']:.2f}x gco), "
                  f"energy {100 * gap:+.5f}% {row['message'].partition('; ')[2]}", flush=True)
        for solver in ("lean", "auto"):
            row = rows[solver]
            ok = (row["seconds"] <= 0.3 * rows["gco"]["seconds"] and row["peak"] <= rows["gco"]["peak"]
                  and abs(row["energy"] - rows["gco"]["energy"]) <= 1e-3 * abs(rows["gco"]["energy"]))
            print(f"    {'PASS' if ok else 'FAIL'}  memory={solver!r}: <= 0.3x gco's time, <= gco's peak memory, "
                  f"energy within 1e-3")


STARTUP = """
import time
began = time.perf_counter()
import numpy as np, admsolve as adm
rng = np.random.default_rng(0)
problem = adm.GridCRF(rng.random((16, 16, 3)), rng.random((4, 16, 16)), lam=1.0)
for name in ("numba-expansion", "numba-swap", "numba-icm"):
    adm.solve(problem, name)
print(time.perf_counter() - began)
"""


def startup_section():
    """Import + first solve with every Numba backend, in a fresh process: with an empty JIT cache
    (compilation) and again with the cache that run wrote."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        seconds = [float(subprocess.run([sys.executable, "-c", STARTUP], env=env, check=True, capture_output=True,
                                        text=True).stdout) for _ in range(2)]
    print(f"\nNumba start-up (import + first solve with numba-expansion, numba-swap, numba-icm, new process): "
          f"empty cache {seconds[0]:.2f} s (JIT compile), cached {seconds[1]:.2f} s")


def main():
    for name, value in OPENMP_SETTINGS.items():  # as the command line sets them, before torch loads
        os.environ.setdefault(name, value)
    args = parse_args()
    ids = image_ids(args.images)
    if ids is None:
        print(f"GrabCut data not found: {DATA}/list.txt is missing", file=sys.stderr)
        return 2
    available = [name for name, ok in adm.available_backends().items()
                 if ok is True and adm.backends.BACKENDS[name].problem is adm.GridCRF]
    backends = args.backends or available
    unusable = [name for name in backends if name not in available]
    if unusable:
        print(f"backend(s) not available here: {', '.join(unusable)}", file=sys.stderr)
        return 2

    version = importlib.metadata.version
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}, numba {version('numba')}, "
          f"PyMaxflow {version('PyMaxflow')}, gco-wrapper {version('gco-wrapper')}, admsolve {adm.__version__}")
    print(f"{len(ids)} GrabCut images at {', '.join(f'{s}x{s}' for s in args.sizes)}, lambda={LAM:g}, "
          f"gamma={GAMMA:g}, max {args.sweeps} sweeps ({args.gd_iterations} iterations for relaxed-gd), "
          f"median of {args.repeats} runs")
    print("time: admsolve = SolveResult.time (the backend's whole minimize call, graph construction and "
          "per-sweep energies included); gco = array conversion + create graph + set costs + neighbours "
          "+ expansion (label initialisation excluded). gap = (E - E_gco) / |E_gco|.")

    warm_up(backends, ids[0], args)
    rows, done = [], 0
    total = len(args.sizes) * len(ids) * len(args.labels) * len(args.connectivity)
    for size in args.sizes:
        for image_id in ids:
            image, scribbles = load_image(image_id, size)
            for n_labels in args.labels:
                for connectivity in args.connectivity:
                    began = time.perf_counter()
                    problem = make_problem(image, scribbles, image_id, n_labels, connectivity)
                    key = dict(size=size, image=image_id, K=n_labels, conn=connectivity)
                    rows += measure_instance(problem, key, backends, args)
                    done += 1
                    print(f"[{done}/{total}] {size}x{size} image {image_id} K={n_labels} {connectivity}-conn: "
                          f"{time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    print_table(rows, backends)
    print_summary(rows, backends, args, len(ids))
    if not args.no_extras:
        batch_section(ids, args)
        latent_section(ids, args)
        subset_section(ids, args)
        startup_section()
    memory_section(ids, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
