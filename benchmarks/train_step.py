"""Benchmark: seconds per training step, gradient descent vs ADM with each grid-CRF solver.

One step = forward pass, the loss (GD: pCE + relaxed grid CRF; ADM: the latent step of eq. 8 for
every image of the batch through ``solve_batch``, then pCE + proximal term), backward pass and Adam
update, on batches of 8 random 256 x 256 crops of MSRC-21 (21 labels, generated scribbles; the
synthetic set, 3 labels, where ../shared/data is absent) with the small FCN on the CPU. The network
is first trained for a few pCE steps (or loaded with --init, e.g. from the pCE phase of a comparison,
where ADM starts in the paper) so that its predictions, the latent step's unaries, have structure;
every configuration then starts from that same network and sees the same batches.

    python benchmarks/train_step.py [--data DIR] [--steps 5] [--warmup-steps 30 | --init CHECKPOINT] [--crop-size 256] [--connectivity 8] [--lam] [--gamma]
                                    [--batch-size 8] [--backends numba-expansion maxflow ...] [--model fcn-small]
                                    [--device auto] [--world-size 1] [--threads N] [--latent-stride 1 2 4]

``--world-size N`` starts N processes under torchrun (DistributedDataParallel, gloo on the CPU, NCCL
on GPUs), each taking its share of every batch; the times are those of rank 0.

``--latent-stride`` lists ADM's latent strides (default 1, the paper's full-resolution eq. 8): one set of
ADM rows per stride.

Printed per configuration: median seconds per step, its ratio to the GD step, the median wall time
of the latent step and its share of the ADM step. The target of issue 5: the fastest ADM step costs
at most 2x the GD step.
"""

import argparse
import copy
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import admsolve as adm
from admsolve.training.config import TrainConfig
from admsolve.training.evaluation import image_tensor
from admsolve.training.loop import Trainer

MSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "msrc21")
RESTRICTABLE = ("maxflow", "numba-expansion", "numba-swap")


class TimedLatentStep:
    """Wraps an ADMStep and records the wall time of each call."""

    def __init__(self, step):
        self.step, self.seconds = step, []

    @property
    def results(self):
        return self.step.results

    def __call__(self, *args):
        began = time.perf_counter()
        latent = self.step(*args)
        self.seconds.append(time.perf_counter() - began)
        return latent


def timed_steps(trainer, phase, batches):
    """One untimed step (JIT compilation, first touch), then the others timed: (step s, latent s) lists."""
    if trainer.objective.adm_step is not None:
        trainer.objective.adm_step = TimedLatentStep(trainer.objective.adm_step)
    steps = []
    for images, scribbles in batches:
        began = time.perf_counter()
        logits = trainer.network(image_tensor(images, trainer.device))
        terms = trainer.objective(phase, logits, images, scribbles)
        trainer.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        trainer.optimizer.step()
        steps.append(time.perf_counter() - began)
    latent = trainer.objective.adm_step.seconds if trainer.objective.adm_step is not None else [0.0] * len(steps)
    return steps[1:], latent[1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=MSRC if os.path.isdir(MSRC) else "synthetic")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after one untimed)")
    parser.add_argument("--warmup-steps", type=int, default=30, help="pCE steps before timing")
    parser.add_argument("--init", help="start from this network (a run's checkpoint.pt, e.g. the pCE phase of "
                                       "admsolve compare) instead of the pCE warm-up steps")
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lam", type=float, default=None)
    parser.add_argument("--gamma", type=float, default=None, help="default: as admsolve train")
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=8)
    parser.add_argument("--backends", nargs="*", default=None, help="grid-CRF backends (default: all usable)")
    parser.add_argument("--model", default="fcn-small", help="network (a name of admsolve train --model)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--world-size", type=int, default=1, help="processes under torchrun (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: the cores divided among the processes; 1 avoids "
                             "the stalls of torch's threads on a machine busy with other work)")
    parser.add_argument("--latent-stride", type=int, nargs="+", default=[1],
                        help="ADM's latent strides, one set of ADM rows each (default 1)")
    args = parser.parse_args()
    if args.world_size > 1 and "WORLD_SIZE" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.world_size}", *sys.argv]
        sys.exit(subprocess.run(command).returncode)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.world_size))

    base = TrainConfig(data=args.data, optimizer="gd", regularizer="grid", crop_size=args.crop_size,
                       batch_size=args.batch_size, lam=args.lam, gamma=args.gamma, connectivity=args.connectivity,
                       pretrain_epochs=1, epochs=1, init=args.init, model=args.model, device=args.device)
    trainer = Trainer(base, "unused", progress=False)
    shares = trainer.batches.shares(1) * (args.steps + 1)  # this process's share of each batch
    batches = [trainer.batches.batch(1, share) for share in shares[:args.steps + 1]]
    if not args.init:
        warmup = [trainer.batches.batch(2, share) for share in trainer.batches.shares(2)[:args.warmup_steps]]
        for _ in range(-(-args.warmup_steps // max(len(warmup), 1))):
            timed_steps(trainer, "pce", warmup)
    start = copy.deepcopy(trainer.model.state_dict())

    available = adm.available_backends()
    names = args.backends or [name for name, entry in adm.backends.BACKENDS.items()
                              if entry.problem is adm.GridCRF and available[name] is True]
    configurations = [("GD grid", dict(optimizer="gd"))]
    for stride in args.latent_stride:
        suffix = "" if stride == 1 else f" stride {stride}"
        for name in names:
            adm_settings = dict(optimizer="adm", backend=name, latent_stride=stride)
            configurations.append((f"ADM {name}{suffix}", adm_settings))
            if name in RESTRICTABLE:
                configurations.append((f"ADM {name} restricted{suffix}", dict(adm_settings, restrict_labels=True)))

    show = trainer.processes.main
    if show:
        print(f"data {args.data} ({trainer.n_labels} labels), batch {args.batch_size} x {args.crop_size}^2 over "
              f"{trainer.processes.world_size} process(es), "
              f"{args.connectivity}-connected grid CRF, lam {base.weight:g}, "
              f"{trainer.model.__class__.__name__}, torch {torch.__version__} on {trainer.device} with "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
              f"median of {args.steps} steps")
        print(f"{'configuration':40s} {'s/step':>7s} {'x GD':>6s} {'latent s':>9s} {'latent share':>13s}")
    gd_time = None
    for label, settings in configurations:
        config = dataclasses.replace(base, **settings)
        run = Trainer(config, "unused", progress=False)
        run.model.load_state_dict(start)
        steps, latent_times = timed_steps(run, "regularized", batches)
        step, latent = statistics.median(steps), statistics.median(latent_times)
        gd_time = gd_time or step
        share = f"{latent / step:13.0%}" if config.optimizer == "adm" else f"{'-':>13s}"
        if show:
            print(f"{label:40s} {step:7.3f} {step / gd_time:6.2f} {latent:9.3f} {share}", flush=True)


if __name__ == "__main__":
    main()
