"""Training under torchrun (torch.distributed, gloo on the CPU): two processes with the same global
batch give the records of one process, up to floating-point rounding (issue 10)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

NETWORK = '''
from torch import nn


def plain(n_labels):
    """No batch statistics: each process's share of a batch gives the gradients of the whole batch."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, n_labels, 1))
'''
SETTINGS = ["--data", "synthetic", "--model", "user_plain:plain", "--optimizer", "adm", "--regularizer", "grid",
            "--pretrain-epochs", "1", "--epochs", "1", "--batch-size", "4", "--crop-size", "32", "--workers", "1",
            "--quiet"]


def run(tmp_path, name, processes):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "-m", "admsolve", "train"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "admsolve", "train"]
    out = tmp_path / name
    done = subprocess.run(command + SETTINGS + ["--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records, json.loads((out / "config.json").read_text())


def test_two_processes_give_the_records_of_one(tmp_path):
    (tmp_path / "user_plain.py").write_text(NETWORK)
    one, config_one = run(tmp_path, "one", 1)
    two, config_two = run(tmp_path, "two", 2)
    assert config_one["world_size"] == 1 and config_two["world_size"] == 2
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one] == [1, 2]
    for a, b in zip(one, two):
        for key in ("train_loss", "train_pce", "miou", "accuracy", "trimap_8", "grid_crf_loss_val",
                    "grid_crf_energy_train"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert two[1]["train_proximal"] == pytest.approx(one[1]["train_proximal"], rel=1e-4)


@pytest.mark.parametrize("regularizer,optimizer", [("dense", "gd"), ("grid", "adm")])
def test_each_process_uses_its_share_of_the_cores_for_the_cpu_work_beside_torch(monkeypatch, regularizer, optimizer):
    import torch

    from admsolve.training import losses
    from admsolve.training.config import TrainConfig
    from admsolve.training.distributed import Processes
    from admsolve.training.objective import Objective

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    seen = {}
    monkeypatch.setattr(losses, "dense_crf_loss", lambda *args, workers, **kwargs: seen.setdefault("workers", workers)
                        * torch.zeros(()))
    objective = Objective(TrainConfig(regularizer=regularizer, optimizer=optimizer, workers=None),
                          Processes(local_world_size=4))  # as on a node of 4 processes (no process group here)
    if optimizer == "adm":
        assert objective.adm_step.workers == 2
    else:
        images = torch.rand(1, 3, 8, 8)
        objective("regularized", torch.zeros(1, 3, 8, 8, requires_grad=True), images,
                  torch.zeros(1, 8, 8, dtype=torch.int64))
        assert seen["workers"] == 2


SUMS = '''
import weakref

import torch.distributed as dist

from admsolve.training.distributed import start

reduced = []
all_reduce = dist.all_reduce
dist.all_reduce = lambda tensor: (reduced.append(weakref.ref(tensor)), all_reduce(tensor))
processes = start("cpu")
for value in range(100):
    assert processes.sum(float(value)) == 2 * value
    assert reduced[-1]() is None, f"sum {value}: gloo still holds the reduced tensor"
'''


def test_a_sum_returns_once_gloo_has_let_go_of_its_tensor(tmp_path):
    """gloo's worker thread lets go of a reduction's tensor after the reduction has returned, and needs the
    GIL for it; at interpreter shutdown that aborted a process (a run's last sum under torchrun). A sum
    returns only once the worker has let go (without the wait about a fifth of these sums returned first)."""
    (tmp_path / "sums.py").write_text(SUMS)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "sums.py")], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_comparison_under_torchrun_starts_each_run_from_the_written_pretrain_checkpoint_and_reports_once(tmp_path):
    """Rank 1 does not write, so it finished the pCE phase first and read the shared pretrain checkpoint before
    rank 0 had written it; and every rank printed the table."""
    (tmp_path / "user_plain.py").write_text(NETWORK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "comparison"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "admsolve", "compare", "--configs", "pce,adm-grid", *SETTINGS[:-1], "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("| ADM grid |") == 1
    assert done.stdout.count("phase 2: ADM grid") == 1
    rows = json.loads((out / "comparison.json").read_text())
    assert [row["key"] for row in rows] == ["pce", "adm-grid"]
