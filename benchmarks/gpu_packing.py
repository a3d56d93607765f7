"""Aggregate training throughput of 1, 2, 4, 8 trainings sharing one device (issue 25).

    python benchmarks/gpu_packing.py [--preset paper] [--arch preact_resnet18] [--packs 1 2 4 8]
                                     [--steps 200] [--compile]

Each training is its own process running the package's loop (``upgp.train.fit``: data and
augmentation on the device, channels-last, bf16 autocast; a cosine schedule) for ``--steps`` batches of random
uint8 images of CIFAR-10's shape at the preset's width and batch size, after a warm-up epoch
of its own. Every process times its measured part; the aggregate is the images all of them
trained over the span from the first start to the last end. ``--compile`` wraps the model in
``torch.compile``. Prints a Markdown table; on a machine without a GPU it runs on the CPU (a
check that the benchmark works, not a packing result).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch


def worker(arch: str, preset_name: str, steps: int, compile_model: bool) -> dict[str, float]:
    """One training: a warm-up run, then ``steps`` timed batches; its own start, end and img/s."""
    from upgp.models import create_model
    from upgp.presets import get_preset
    from upgp.train import fit

    preset = get_preset(preset_name)
    torch.manual_seed(0)
    n = preset.batch_size * steps
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    model = create_model(arch, 10, preset.width)
    if compile_model:
        model = torch.compile(model)
    # a cosine schedule: OneCycle needs more steps than a short timed run has; the rate at
    # which images are trained does not depend on the schedule
    common = dict(batch_size=preset.batch_size, lr=preset.lr, schedule="cosine", bf16=preset.bf16)
    fit(model, x[: 4 * preset.batch_size], y[: 4 * preset.batch_size], 1, **common)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.time()
    fit(model, x, y, 1, **common)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    end = time.time()
    return {"start": start, "end": end, "images": n, "img/s": n / (end - start)}


def pack(k: int, args: argparse.Namespace) -> dict[str, float]:
    """``k`` worker processes at once; their aggregate img/s over the span they share."""
    cmd = [sys.executable, __file__, "--worker", "--arch", args.arch, "--preset", args.preset,
           "--steps", str(args.steps), *(["--compile"] if args.compile else [])]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(k)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a training of the pack of {k} failed (exit {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"trainings": k, "aggregate img/s": sum(r["images"] for r in results) / span,
            "per training img/s": sum(r["img/s"] for r in results) / k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--arch", default="preact_resnet18")
    parser.add_argument("--packs", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=200, help="timed batches per training")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.arch, args.preset, args.steps, args.compile)))
        return
    from upgp.presets import PRESETS, check_choice, get_preset

    try:
        check_choice("preset", args.preset, PRESETS)
    except ValueError as err:
        parser.error(str(err))
    preset = get_preset(args.preset)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else (
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    print(f"# packing, preset {args.preset} ({args.arch}, width {preset.width}, batch "
          f"{preset.batch_size}, bf16 {preset.bf16}), {args.steps} timed batches per training, "
          f"compile {args.compile}; {device}, torch {torch.__version__}")
    print("| trainings | aggregate img/s | per training img/s | vs one |")
    print("|---|---|---|---|")
    one = None
    for k in args.packs:
        row = pack(k, args)
        one = one or row["aggregate img/s"]
        print(f"| {k} | {row['aggregate img/s']:,.0f} | {row['per training img/s']:,.0f} | "
              f"{row['aggregate img/s'] / one:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
