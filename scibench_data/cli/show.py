"""``scibench-data show {cloudmask,stemdl,uno}``: a sample (and a prediction) as a PNG picture.

The data stack is imported inside the commands: ``--help`` stays fast."""

from __future__ import annotations

import argparse

from scibench_data.cli.common import add_root, show_out


def _show_cloudmask(args: argparse.Namespace) -> int:
    from scibench_data.show import show_cloudmask

    out = show_out(args, "cloudmask", f"scene-{args.scene}")
    print(f"wrote {show_cloudmask(args.scene, out, args.root, args.prediction)}")
    return 0


def _show_stemdl(args: argparse.Namespace) -> int:
    from scibench_data.show import show_stemdl

    out = show_out(args, "stemdl", f"sample-{args.sample}-{args.task}")
    print(f"wrote {show_stemdl(args.sample, out, args.root, args.prediction, args.task)}")
    return 0


def _show_uno(args: argparse.Namespace) -> int:
    from scibench_data.show import show_uno

    out = show_out(args, "candle_uno", "test-predictions")
    print(f"wrote {show_uno(args.prediction, out, args.root)}")
    return 0


def register(cli) -> None:
    p = cli.dataset("show", "cloudmask", _show_cloudmask, "PNG of a scene: false colour, brightness temperature, "
                    "label, prediction")
    p.add_argument("--scene", type=int, required=True, help="scene index in the store")
    p.add_argument("--prediction", default=None, help="prediction file (cloudmask format)")
    p.add_argument("--out", default=None, help="PNG file (default ROOT/outputs/cloudmask/pictures/scene-N.png)")
    add_root(p)
    p = cli.dataset("show", "stemdl", _show_stemdl, "PNG of a sample's CBED stack (and potential, prediction)")
    p.add_argument("--sample", type=int, required=True, help="sample index in the store")
    p.add_argument("--task", choices=("classification", "reconstruction"), default="classification")
    p.add_argument("--prediction", default=None, help="prediction file (stemdl or stemdl_reconstruction format)")
    p.add_argument("--out", default=None,
                   help="PNG file (default ROOT/outputs/stemdl/pictures/sample-N-TASK.png)")
    add_root(p)
    p = cli.dataset("show", "uno", _show_uno, "PNG scatter of predicted vs true AUC on the test split")
    p.add_argument("--prediction", required=True,
                   help="prediction file (candle_uno format: predict uno, or a run's predictions-candle_uno.npz)")
    p.add_argument("--out", default=None, help="PNG file (default ROOT/outputs/candle_uno/pictures/test-predictions.png)")
    add_root(p)
