"""The GPU check: every CUDA and CuPy path of admsolve against the CPU's, with their times, in one command.

On a machine with a CUDA GPU, from the repository root::

    python3 benchmarks/gpu_check.py [--log FILE] [--budget 540]

runs, in order of value, each part under a time limit and all of them within ``--budget`` seconds:

1. environment: nvidia-smi, Python, torch and its CUDA, CuPy; then installs what the parts need and
   is missing (the requirements of the core, ``test``, ``cuda``, pydensecrf2 of ``bench`` and
   matplotlib of ``train``, as pyproject.toml names them): first from the files that ``--prepare``
   put in ``.gpu-check/packages`` (no network needed; pydensecrf2 is a source package, built there in
   the background while the tests run), then from PyPI (one short try). torch is never installed:
   the machine's CUDA build stays. admsolve itself runs from this tree (PYTHONPATH).
2. ``pytest -m gpu``: the tests that compare CuPy with NumPy.
3. ``benchmarks/densecrf.py --device cuda``: the mean-field on CuPy against pydensecrf on the CPU
   (target >= 20x faster), its labels against the CPU's float64 iterations.
4. ``benchmarks/losses.py --device cuda``: the dense- and grid-CRF losses on CUDA against the CPU
   (target: the dense one >= 10x faster), values and gradients compared.
5. ``admsolve train`` of GD grid, ADM grid and GD dense (the last with CuPy only), a few epochs
   with ``--device cuda --amp`` and on the CPU, printing seconds per step (from metrics.jsonl and
   steps.jsonl).

The benchmarks read GrabCut from ``.gpu-check/grabcut`` or ``../shared/data/grabcut`` (which does not
travel to a lent GPU machine); training uses that folder too (fcn-small, crops of 256), else the
synthetic data. Before a run on a machine with no network, prepare both here::

    python3 benchmarks/gpu_check.py --prepare

(copies 24 GrabCut images and downloads the pydensecrf2 source into ``.gpu-check/``, ignored by git),
and carry ``.gpu-check`` along. A part whose library (CuPy, pydensecrf) or data is missing is
reported as not run; without a CUDA device every CUDA part is skipped with a line saying so.

Prints each part's output, then a summary table. Exit status 1 if a CUDA or CuPy result disagrees
with the CPU's (an "agreement: FAIL" line, a failed test) or a part that ran broke; 0 otherwise,
missed speed targets, parts not run and time-outs included (the table shows them).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / ".gpu-check"
SHARED_GRABCUT = ROOT.parent / "shared" / "data" / "grabcut"
#: What the parts need, by distribution name (their requirement strings come from pyproject.toml), with the
#: module each one imports as. torch is not among them: the machine's own CUDA build is used.
NEEDED = {"numpy": "numpy", "scipy": "scipy", "numba": "numba", "pillow": "PIL", "pytest": "pytest",
          "hypothesis": "hypothesis", "cupy-cuda12x": "cupy", "pydensecrf2": "pydensecrf", "matplotlib": "matplotlib"}
PREPARED_IMAGES = 24  # GrabCut ids copied by --prepare: the benchmarks' first ones, and a few training batches
#: Training runs: name, admsolve train options; "needs" names the module a run cannot do without.
TRAININGS = [("GD grid", ["--optimizer", "gd", "--regularizer", "grid"], None),
             ("ADM grid", ["--optimizer", "adm", "--regularizer", "grid"], None),
             ("GD dense", ["--optimizer", "gd", "--regularizer", "dense"], "cupy")]
LIMITS = {"install": 90, "pydensecrf build": 240, "pytest -m gpu": 150, "densecrf": 150, "losses": 100, "train run": 60}


class Report:
    """Prints to stdout and, with `log`, to a file too."""

    def __init__(self, log):
        self.log = open(log, "w") if log else None

    def __call__(self, text=""):
        print(text, flush=True)
        if self.log:
            self.log.write(text + "\n")
            self.log.flush()


def requirements():
    """{distribution name: requirement string} of NEEDED, read from pyproject.toml."""
    import tomllib  # Python >= 3.11

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    strings = project["dependencies"] + [r for group in project["optional-dependencies"].values() for r in group]
    found = {}
    for string in strings:
        name = string.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip()
        if name in NEEDED:
            found[name] = string
    return found


def environment():
    """The subprocesses' environment: this tree first on PYTHONPATH, unbuffered output."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def importable(module):
    """Whether `module` imports in a fresh process (after installs, which this one would not see)."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, env=environment())
    return done.returncode == 0


def run(report, command, limit, cwd=ROOT):
    """Runs `command` for at most `limit` seconds, prints its output; (exit status or "timeout", output)."""
    report(f"$ {' '.join(str(part) for part in command)}   (limit {limit:.0f} s)")
    began = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=limit)
        status, output = done.returncode, done.stdout
    except subprocess.TimeoutExpired as expired:
        status = "timeout"
        output = expired.output.decode(errors="replace") if isinstance(expired.output, bytes) else expired.output or ""
    report(output.rstrip())
    report(f"[exit {status} after {time.perf_counter() - began:.1f} s]")
    return status, output


def grabcut():
    """The GrabCut folder the benchmarks read, or None."""
    return next((folder for folder in (PREPARED / "grabcut", SHARED_GRABCUT) if (folder / "list.txt").is_file()), None)


def verdict(status, output):
    """The summary's word for a benchmark part (exit status 2: a library or the data is missing): its
    "agreement:" line failed, it broke before that line, it did not run, or it passed (with its speed
    target, a "target" line ending in PASS or FAIL, met or missed)."""
    if status == "timeout":
        return "TIMEOUT"
    lines = output.strip().splitlines()
    if status == 2:
        return "NOT RUN: " + (lines[-1] if lines else "")
    agreement = [line.split()[-1] for line in lines if line.startswith("agreement:")]
    if "FAIL" in agreement:
        return "FAIL: disagrees"
    if not agreement or status not in (0, 1):
        return f"FAIL: exit {status}"
    missed = any("target" in line and line.rstrip().endswith("FAIL") for line in lines)
    return "PASS, speed target missed" if missed else "PASS"


def lines_starting(output, *prefixes):
    return [line.strip() for line in output.splitlines() if line.strip().startswith(prefixes)]


def step_times(run_folder):
    """(s/step of the first regularized epoch, median s/step of the later ones, ADM's solver s/step or None)
    from metrics.jsonl and steps.jsonl."""
    metrics = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [json.loads(line) for line in (run_folder / "steps.jsonl").read_text().splitlines() if line.strip()]
    per_step, solver = [], []
    for record in metrics:
        if record.get("phase") != "regularized" or "train_time" not in record:
            continue
        count = sum(1 for step in steps if step["epoch"] == record["epoch"])
        per_step.append(record["train_time"] / count)
        if "solver_time" in record:
            solver.append(record["solver_time"] / count)
    later = per_step[1:] or per_step
    return per_step[0], statistics.median(later), statistics.median(solver[1:] or solver) if solver else None


def train_part(report, deadline, data, cupy):
    """The training runs on CUDA (--amp) and on the CPU; (summary rows, whether any broke)."""
    rows, broke = [], False
    if data is None:
        options = ["--data", "synthetic"]
        described = "synthetic data (fcn-small, crops of 96)"
    else:
        options = ["--data", str(data), "--model", "fcn-small", "--crop-size", "256"]
        described = f"{data} (fcn-small, crops of 256)"
    common = options + ["--batch-size", "8", "--pretrain-epochs", "1", "--epochs", "4", "--eval-every", "100",
                        "--seed", "0"]
    report(f"training on {described}, batch 8, 1 pCE epoch + 4 regularized epochs; s/step = an epoch's "
           "train_time / its steps")
    with tempfile.TemporaryDirectory() as folder:
        for name, flags, needs in TRAININGS:
            for device in ("cuda", "cpu"):
                label = f"train {name} {'cuda --amp' if device == 'cuda' else 'cpu'}"
                if needs == "cupy" and not cupy:
                    rows.append((label, "NOT RUN: needs CuPy", ""))
                    continue
                limit = min(LIMITS["train run"], deadline - time.monotonic())
                if limit < 10:
                    rows.append((label, "NOT RUN: out of time", ""))
                    continue
                out = Path(folder) / f"{name.replace(' ', '-')}-{device}"
                device_flags = ["--device", "cuda", "--amp"] if device == "cuda" else ["--device", "cpu"]
                status, output = run(report, [sys.executable, "-m", "admsolve", "train", *common, *flags, *device_flags,
                                              "--out", str(out)], limit)
                if status != 0:
                    broke |= status != "timeout"
                    rows.append((label, "TIMEOUT" if status == "timeout" else f"FAIL: exit {status}", ""))
                    continue
                first, later, solver = step_times(out)
                figures = f"{later:.3f} s/step (first epoch {first:.3f})"
                if solver is not None:
                    figures += f", latent step {solver:.3f} s/step"
                rows.append((label, "PASS", figures))
    return rows, broke


def prepare(report):
    """Copies the first GrabCut images and downloads pydensecrf2's source into .gpu-check/."""
    if not (SHARED_GRABCUT / "list.txt").is_file():
        report(f"--prepare: GrabCut not found at {SHARED_GRABCUT}")
        return 2
    target = PREPARED / "grabcut"
    shutil.rmtree(target, ignore_errors=True)
    ids = (SHARED_GRABCUT / "list.txt").read_text().split()[:PREPARED_IMAGES]
    for folder in ("images", "masks", "scribbles_set1"):
        (target / folder).mkdir(parents=True)
        for image_id in ids:
            for path in (SHARED_GRABCUT / folder).glob(f"{image_id}.*"):
                shutil.copy(path, target / folder / path.name)
    for split in ("list", "train", "val"):
        kept = [i for i in (SHARED_GRABCUT / f"{split}.txt").read_text().split() if i in ids]
        (target / f"{split}.txt").write_text("\n".join(kept) + "\n")
    packages = PREPARED / "packages"
    shutil.rmtree(packages, ignore_errors=True)
    status, _ = run(report, [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                             "-d", str(packages), requirements()["pydensecrf2"]], 300)
    size = sum(path.stat().st_size for path in PREPARED.rglob("*") if path.is_file())
    report(f"prepared {PREPARED} ({size / 2**20:.1f} MiB): {len(ids)} GrabCut images; pydensecrf2's source "
           f"{'downloaded' if status == 0 else 'NOT downloaded'}. On the GPU machine: "
           "python3 benchmarks/gpu_check.py, carrying .gpu-check")
    return 0 if status == 0 else 1


def install(report, needed):
    """Installs the missing requirements: the prepared packages in a background build (returned, or None),
    the rest from PyPI now. Returns (background process or None, its log path)."""
    missing = {name: string for name, string in needed.items() if not importable(NEEDED[name])}
    report(f"missing: {', '.join(missing) or 'nothing'}")
    prepared = {name: path for name in missing for path in (PREPARED / "packages").glob(f"{name}-*")}
    background, log = None, Path(tempfile.gettempdir()) / "gpu_check_packages.log"
    if prepared:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", "--no-deps",
                   *map(str, prepared.values())]
        report(f"building in the background (log {log}): {' '.join(command)}")
        background = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=environment())
    online = [string for name, string in missing.items() if name not in prepared]
    if online:
        run(report, [sys.executable, "-m", "pip", "install", "-q", "--retries", "0", "--timeout", "5",
                     "--no-build-isolation", *online], LIMITS["install"])
    return background, log


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="copy GrabCut images and download pydensecrf2's "
                        "source into .gpu-check/ (before a run on a machine with no network)")
    parser.add_argument("--log", help="also write everything printed to this file")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all the parts (default %(default)s)")
    args = parser.parse_args()
    report = Report(args.log)
    if args.prepare:
        return prepare(report)
    deadline = time.monotonic() + args.budget
    report(f"GPU check of admsolve at {ROOT}, {time.strftime('%Y-%m-%d %H:%M:%S')}; budget {args.budget:.0f} s")
    if shutil.which("nvidia-smi"):
        run(report, ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,utilization.gpu",
                     "--format=csv"], 20)
    else:
        report("nvidia-smi: not found")
    status, output = run(report, [sys.executable, "-c",
                                  "import sys, os, torch; print('python', sys.version.split()[0], '|', os.cpu_count(), "
                                  "'CPUs | torch', torch.__version__, 'CUDA', torch.version.cuda); "
                                  "print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else "
                                  "'none'); sys.exit(0 if torch.cuda.is_available() else 3)"], 60)
    rows = []
    if status != 0:
        reason = "torch is not importable" if status != 3 else "torch finds no CUDA device"
        report(f"no CUDA: {reason}; every CUDA part is skipped (a dry run: nothing was installed)")
        rows = [(part, f"SKIPPED: {reason}", "") for part in ("pytest -m gpu", "densecrf", "losses", "train")]
        print_summary(report, rows)
        return 0

    background, build_log = install(report, requirements())
    cupy = importable("cupy")
    run(report, [sys.executable, "-c", "import cupy; print('CuPy', cupy.__version__, 'CUDA runtime', "
                 "cupy.cuda.runtime.runtimeGetVersion(), 'devices', cupy.cuda.runtime.getDeviceCount())"], 60)
    data = grabcut()
    report(f"GrabCut: {data or 'not found (neither .gpu-check/grabcut nor ../shared/data/grabcut)'}")
    broke = False

    def limit(part):
        return max(0.0, min(LIMITS[part], deadline - time.monotonic()))

    # 2. the gpu tests
    if limit("pytest -m gpu") < 10:
        rows.append(("pytest -m gpu", "NOT RUN: out of time", ""))
    else:
        status, output = run(report, [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                             limit("pytest -m gpu"))
        last = output.strip().splitlines()[-1] if output.strip() else ""
        if status == "timeout":
            word = "TIMEOUT"
        elif status == 0:
            word = "PASS" if "passed" in last else "NOT RUN: skipped (CuPy or CUDA unavailable)"
        else:
            word, broke = f"FAIL: exit {status}", True
        rows.append(("pytest -m gpu", word, last.strip("= ")))

    # 3. the dense CRF against pydensecrf
    if background is not None:
        try:
            background.wait(timeout=max(1.0, min(LIMITS["pydensecrf build"], deadline - time.monotonic() - 60)))
        except subprocess.TimeoutExpired:
            background.kill()
        report(f"background install: exit {background.returncode}; {build_log.read_text()[-2000:].strip()}")
    densecrf = [sys.executable, "benchmarks/densecrf.py", "--device", "cuda", "--images", "2", "--sizes", "321", "513",
                "--labels", "5", "21", "--repeats", "3"]
    part_rows = [("densecrf", densecrf + ["--data", str(data)] if data else None, ("321x321", "513x513", "agreement:")),
                 ("losses", [sys.executable, "benchmarks/losses.py", "--device", "cuda", "--data", str(data)]
                  if data else None, ("DenseCRFLoss", "GridCRFLoss", "target:", "agreement:"))]
    for part, command, prefixes in part_rows:
        if command is None:
            rows.append((part, "NOT RUN: no GrabCut folder (run --prepare and carry .gpu-check)", ""))
        elif limit(part) < 10:
            rows.append((part, "NOT RUN: out of time", ""))
        else:
            status, output = run(report, command, limit(part))
            word = verdict(status, output)
            broke |= word.startswith("FAIL")
            rows.append((part, word, "\n".join(lines_starting(output, *prefixes))))

    # 5. training
    train_rows, train_broke = train_part(report, deadline, data, cupy)
    rows += train_rows
    broke |= train_broke
    print_summary(report, rows)
    return 1 if broke else 0


def print_summary(report, rows):
    report("\nsummary")
    report(f"{'part':<28} {'result':<44} figures")
    report("-" * 100)
    for part, word, figures in rows:
        first, *rest = figures.splitlines() or [""]
        report(f"{part:<28} {word[:44]:<44} {first}")
        for line in rest:
            report(f"{'':<73} {line}")


if __name__ == "__main__":
    sys.exit(main())
