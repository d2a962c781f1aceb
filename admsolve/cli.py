"""The ``admsolve`` command line: segment an image from scribbles, list backends, run the demo."""

import argparse
import sys
import time

import numpy as np

from . import backends
from .densecrf import DenseCRF
from .gridcrf import GridCRF, contrast_weights
from .io import colorize, overlay, read_image, read_label_map, save_sheet, write_label_map
from .solve import solve
from .unaries import scribble_unary


def scribble_problem(image, scribbles, *, kind="GridCRF", lam, connectivity):
    """The interactive-segmentation problem: colour-model unaries from the scribbles, which are also
    its hard constraints, with a grid CRF (contrast weights, `lam`, `connectivity`) or a dense CRF
    (pydensecrf's usual kernels: bilateral sxy=80, srgb=13, compat=10; Gaussian sxy=3, compat=3)."""
    if scribbles.shape != image.shape[:2]:
        raise ValueError(f"scribbles: expected the image's size {image.shape[:2]}, got {scribbles.shape}")
    unary = scribble_unary(image, scribbles)
    if kind == "DenseCRF":
        return DenseCRF(unary, image, seeds=scribbles)
    return GridCRF(unary, contrast_weights(image, connectivity=connectivity), lam=lam, seeds=scribbles)


def cmd_segment(args):
    image = read_image(args.image)
    scribbles = read_label_map(args.scribbles, "scribbles")
    kind = backends.BACKENDS[args.backend].problem if args.backend else "GridCRF"
    problem = scribble_problem(image, scribbles, kind=kind, lam=args.lam, connectivity=args.connectivity)
    options = {} if args.max_sweeps is None else {"max_sweeps": args.max_sweeps}
    result = solve(problem, args.backend, **options)
    write_label_map(args.output, result.labels)
    if args.overlay:
        save_sheet(args.overlay, [overlay(image, result.labels, scribbles)],
                   [f"{result.backend}: energy {result.energy:.1f}"], columns=1)
    print(f"{args.output}: {problem!r} solved by {result.backend} in {result.time:.3f} s, "
          f"{result.sweeps} sweeps, energy {result.energy:.3f}")


def cmd_backends(args):
    for name, status in backends.available_backends().items():
        entry = backends.BACKENDS[name]
        state = "available" if status is True else f"unavailable: {status}"
        print(f"{name:16s} {entry.description} [{state}]")


def cmd_demo(args):
    from .examples import synthetic_scene

    image, scribbles, truth = synthetic_scene()
    problems = {kind: scribble_problem(image, scribbles, kind=kind, lam=args.lam, connectivity=args.connectivity)
                for kind in ("GridCRF", "DenseCRF")}
    print(f"built-in example: {problems['GridCRF']!r}; the dense CRF has the same unaries and seeds")
    print(f"{'backend':16s} {'model':8s} {'sweeps':>6s} {'energy':>12s} {'time (s)':>9s} {'accuracy':>9s}")
    tiles = [image, overlay(image, truth, scribbles), colorize(problems["GridCRF"].initial_labels())]
    captions = ["image", "truth + scribbles", "colour model alone"]
    for name, status in backends.available_backends().items():
        if status is not True:
            print(f"{name:16s} skipped: {status}")
            continue
        kind = backends.BACKENDS[name].problem
        options = {"max_sweeps": args.max_sweeps} if kind == "GridCRF" else {}
        began = time.perf_counter()
        solve(problems[kind], name, **options)  # the first call also compiles or imports the backend
        first_call = time.perf_counter() - began
        result = solve(problems[kind], name, **options)
        accuracy = float(np.mean(result.labels == truth))
        print(f"{name:16s} {kind[:-3].lower():8s} {result.sweeps:6d} {result.energy:12.2f} {result.time:9.3f} "
              f"{accuracy:9.2%}   (first call {first_call:.2f} s)")
        tiles.append(colorize(result.labels))
        captions.append(f"{name}: E={result.energy:.0f}")
    if args.sheet:
        save_sheet(args.sheet, tiles, captions, columns=3)
        print(f"wrote {args.sheet}")


def build_parser():
    parser = argparse.ArgumentParser(prog="admsolve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment an image from scribbles with a grid CRF")
    segment.add_argument("image", help="image file (any format Pillow reads)")
    segment.add_argument("scribbles", help="label PNG, same size: 0..K-1 scribbled labels, 255 unlabeled")
    segment.add_argument("-o", "--output", required=True, help="label PNG to write (values 0..K-1)")
    segment.add_argument("--overlay", help="also write the segmentation drawn over the image")
    segment.set_defaults(run=cmd_segment)

    commands.add_parser("backends", help="list solver backends and whether each can be used").set_defaults(
        run=cmd_backends)

    demo = commands.add_parser("demo", help="segment the built-in example with every available backend")
    demo.add_argument("--sheet", help="write a PNG with every backend's segmentation")
    demo.add_argument("--max-sweeps", type=int, default=200,
                      help="cap on each solver's sweeps (default 200: relaxed GD's iterations)")
    demo.set_defaults(run=cmd_demo)

    for sub in (segment, demo):
        sub.add_argument("--lam", type=float, default=20.0,
                         help="grid CRF: weight of the Potts term (default 20, the best on GrabCut with "
                              "colour-model unaries)")
        sub.add_argument("--connectivity", type=int, choices=(4, 8), default=8, help="grid CRF: neighbourhood")
    segment.add_argument("--backend", default=None, choices=list(backends.BACKENDS),
                         help="solver; cupy-densecrf segments with a dense CRF, the others with the grid CRF "
                              "(default: the first usable of " + ", ".join(backends.DEFAULT_PREFERENCE["GridCRF"]) + ")")
    segment.add_argument("--max-sweeps", type=int, default=None, help="cap on solver sweeps")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, ImportError, OSError) as exc:
        print(f"admsolve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
