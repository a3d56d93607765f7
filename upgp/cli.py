"""Command line: ``upgp train``, ``upgp defend``, ``upgp reproduce`` and ``upgp run``.

Every command prints its numbers with the preset, seed, data copy and model width, and can write
them to ``--out result.json``. Bad names or values end with one line naming the allowed ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .attacks import ATTACKS
from .data import DataUnavailableError
from .defenses import DEFENSES
from .io import check_writable, write_json
from .models import MODELS
from .presets import PRESETS, Preset, check_choice, get_preset
from .sweep import SweepIncomplete


def _scenario_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attack", default="badnets", help=f"one of: {', '.join(sorted(ATTACKS))}")
    p.add_argument("--arch", default="preact_resnet18", help=f"one of: {', '.join(sorted(MODELS))}")
    p.add_argument("--preset", default="cpu", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--target", type=int, help="all-to-one target label (default 0)")
    p.add_argument("--label-mode", default="all2one", help="all2one | all2all (y -> y+1 mod C)")
    p.add_argument("--ratio", type=float, dest="poison_ratio", help="poisoning ratio in (0, 1)")
    p.add_argument("--reserve", type=float, dest="reserve_ratio",
                   help="clean reserve share of the training set, in (0, 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int)
    p.add_argument("--width", type=int, help="base channels of the model (64 = standard)")
    p.add_argument("--data", help="ImageFolder copy of CIFAR-10 (else $UPGP_DATA, else download)")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    p.add_argument("--attack-param", action="append", default=[], metavar="KEY=VALUE",
                   help="an attack parameter, e.g. --attack-param cross_ratio=0 (bpp)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _scenario_inputs(args: argparse.Namespace) -> tuple[dict[str, Any], Preset]:
    """Check every scenario flag before any work: the attack with its parameters and label
    mode, the architecture, the preset with its overrides, and that ``--out`` can be written.
    Returns (attack parameters, preset); a bad value raises a one-line error."""
    from .attacks import create_attack

    attack_params = _parse_settings(args.attack_param, "--attack-param")
    if args.label_mode != "all2one":
        attack_params["label_mode"] = args.label_mode
    create_attack(args.attack, **attack_params)
    check_choice("model", args.arch, sorted(MODELS))
    overrides = {k: getattr(args, k) for k in ("target", "poison_ratio", "reserve_ratio",
                                                "epochs", "width")}
    preset = get_preset(args.preset, args.attack, args.arch, **overrides)
    check_writable(args.out, "--out")
    return attack_params, preset


def _load(args: argparse.Namespace, attack_params: dict[str, Any], preset: Preset):
    from .scenarios import backdoored_model

    return backdoored_model(args.attack, args.arch, preset, args.seed, args.data,
                            attack_params, progress=not args.quiet)


def _fmt(m: dict[str, float]) -> str:
    return f"ACC {m['acc']:.2f}  ASR {m['asr']:.2f}  RA {m['ra']:.2f}"


def _finish(result: dict[str, Any], out: Path | None) -> None:
    from .style import commit

    result["commit"] = commit()
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")


def _header(run: dict[str, Any]) -> str:
    return (f"{run['attack']} / {run['arch']} (width {run['width']}, {run['epochs']} epochs) / "
            f"preset {run['preset']} "
            f"[{run['scale']}] / seed {run['seed']} / {run['data']}")


def cmd_train(args: argparse.Namespace) -> None:
    attack_params, preset = _scenario_inputs(args)
    start = time.perf_counter()
    sc = _load(args, attack_params, preset)
    result = {"run": sc.describe(), "no_defense": sc.metrics, "training": sc.info,
              "wall_seconds": time.perf_counter() - start}
    print(_header(sc.describe()))
    cache = "cache hit" if sc.info.get("cache_hit") else f"trained in {sc.info['train_seconds']:.0f} s"
    print(f"no defense: {_fmt(sc.metrics)}  ({cache})")
    cost = sc.info.get("attack_cost", {})
    if "surrogate" in cost:
        sur = cost["surrogate"]
        state = "cache hit" if sur["cache_hit"] else "trained"
        print(f"attack cost: clean surrogate {sur['train_seconds']:.0f} s ({state}), "
              f"poisoning {cost['poisoning_seconds']:.0f} s (not in the training time)")
    if "trigger" in cost:
        print(f"attack cost: mask network {cost['trigger'].get('mask_seconds', float('nan')):.0f} s "
              "before training; the pattern generator trains with the classifier")
    if sc.metrics["asr"] < 80:
        print(f"warning: ASR {sc.metrics['asr']:.1f}% is below 80%: the attack did not take hold")
    _finish(result, args.out)


def _literal(value: str) -> Any:
    """A command-line value as a JSON literal (number, bool, list...), else the string itself."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _parse_settings(pairs: list[str], flag: str) -> dict[str, Any]:
    """``key=value`` pairs -> typed settings."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{flag} {pair!r} is not of the form key=value")
        key, value = pair.split("=", 1)
        out[key] = _literal(value)
    return out


def cmd_defend(args: argparse.Namespace) -> None:
    from .defenses import defense_config, get_defense
    from .defenses.upgp import UPGP_DEFENSES
    from .runs import run_defense

    get_defense(args.defense)  # fail early on an unknown name
    settings = _parse_settings(args.set, "--set")
    if (args.no_projection or args.repair) and args.defense not in UPGP_DEFENSES:
        raise ValueError(f"--no-projection and --repair apply to {', '.join(UPGP_DEFENSES)} "
                         f"only, not {args.defense!r}")
    attack_params, preset = _scenario_inputs(args)
    config = defense_config(args.defense, preset, args.seed, **settings)
    if args.repair:
        config = config.with_repair(args.repair, args.rounds)
    if args.no_projection:
        config = config.without_projection()
    r = run_defense(_load(args, attack_params, preset), args.defense, config)
    print(_header(r["run"]))
    print(f"before: {_fmt(r['before'])}")
    label = (f"UPGP (projection {config.projection}, repair steps {config.repair_steps}, "
             f"trigger share {config.repair_trigger_share})"
             if args.defense in UPGP_DEFENSES else args.defense)
    print(f"after {label}: {_fmt(r['after'])}  DER {r['der']:.2f}  wall {r['wall_seconds']:.1f} s"
          f"  (one training epoch {r['train_epoch_seconds']:.1f} s)")
    det = r.get("detection")
    if det:
        auroc = f"AUROC {det['auroc']:.4f}  " if "auroc" in det else ""
        print(f"detection: {auroc}flagged {det['flagged']}/{det['true_poisoned']}  "
              f"precision {det['precision']:.3f}  recall {det['recall']:.3f}  FPR {det['fpr']:.4f}")
    if "upgp" in r:
        u = r["upgp"]
        if u.get("detection_backdoor_found") is False:
            print(f"nothing to remove: {100 * u['detection_evidence_share']:.2f}% of the training "
                  f"set scores under the held-out reserve's {100 * config.reserve_fpr:g}% "
                  f"quantile, within clean noise (bound {100 * u['detection_evidence_bound']:.2f}"
                  f"%); the model is returned unchanged")
        else:
            print(f"removal: {u['removal_steps']} steps, stopped: {u['removal_stop']}")
        print("seconds: " + "  ".join(f"{k} {v:.1f}" for k, v in r["upgp"]["seconds"].items()))
    _finish(r, args.out)


def cmd_sweep(args: argparse.Namespace) -> None:
    from .sweep import sweep

    check_writable(args.out, "--out")
    table = sweep(args.defenses, args.attacks, args.archs, args.seeds, args.preset, args.out,
                  args.data, progress=not args.quiet, ray=args.ray, ray_cpus=args.ray_cpus,
                  ray_gpus=args.ray_gpus)
    cols = ["defense", "attack", "arch", "seed", "acc", "asr", "ra", "der", "wall_seconds"]
    print(table[cols].round(2).to_string(index=False))


def _ray_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help=f"{what} as Ray tasks: alone, a local Ray for this run; with an address "
                        "(auto, ray://host:10001) that cluster")
    p.add_argument("--ray-cpus", type=int, default=1, help="threads per Ray task (default 1)")
    p.add_argument("--ray-gpus", type=float, default=0.0,
                   help="GPU share per Ray task, e.g. 0.25: four trainings on one GPU")


def cmd_plan(args: argparse.Namespace) -> None:
    import pandas as pd

    from .plan import plan
    from .reproduce import notebooks, parse_parameters, resolve, results_dir

    if bool(args.notebooks) == args.all:
        raise ValueError("name the notebooks to plan, or --all (not both)")
    check_choice("preset", args.preset, PRESETS)
    stems = list(notebooks()) if args.all else [p.stem for p in resolve(args.notebooks)]
    parameters = parse_parameters(stems[0], args.p) if args.p else {}
    if args.p and len(stems) > 1:
        raise ValueError("-p applies to one notebook; name just one")
    table = plan(stems, args.preset, parameters, args.data)
    shown = table.assign(**{c: table[c].round(0) for c in ("train s", "estimated s")})
    print(shown.drop(columns="cache file").to_string(index=False))
    missing = table[~table.cached]
    counts = missing["timed by"].value_counts()
    sources = [f"{counts[s]} by {label}" for s, label in
               (("cache", "this cache's models"), ("results", f"results/{args.preset}'s records"))
               if s in counts]
    if "untimed" in counts:
        sources.append(f"{counts['untimed']} with no recorded rate, not counted")
    print(f"\npreset {args.preset}: {len(table)} models, {int(table.cached.sum())} cached; "
          f"training the other {len(missing)} takes about "
          f"{missing['estimated s'].sum() / 60:.0f} min"
          + (f" ({'; '.join(sources)})" if sources else "")
          + f"; from an empty cache, about {table['train s'].sum() / 60:.0f} min")
    times = results_dir(args.preset) / "notebook_times.csv"
    if times.exists():
        last = pd.read_csv(times).set_index("notebook").reindex(
            index=stems, columns=["seconds", "models trained"])  # runs before it: no count
        trained = last["models trained"]
        print(f"the chapters' last runs took {last.seconds.sum() / 60:.0f} min in all, with the "
              f"cache they found then ({int(last.seconds.isna().sum())} never timed); models "
              f"they trained: {int(trained.sum())} (counted by {int(trained.notna().sum())} of "
              f"the {len(stems)} runs)")


def cmd_reproduce(args: argparse.Namespace) -> None:
    from .reproduce import notebooks, reproduce

    if args.ray:
        from .plan import train_missing

        errors = train_missing(args.only or list(notebooks()), args.preset, None,
                               address=args.ray, cpus=args.ray_cpus, gpus=args.ray_gpus)
        for error in errors:
            print(f"    training failed: {error}", file=sys.stderr)
    table = reproduce(args.preset, args.only or None, jobs=args.jobs)
    print(table.to_string(index=False))
    if (table.status != "ok").any():
        raise SystemExit(1)


def cmd_run(args: argparse.Namespace) -> None:
    from .reproduce import parse_parameters, run_one

    parameters = parse_parameters(args.notebook, args.p)
    check_writable(args.output, "--output", folder=True)
    run_one(args.notebook, parameters, args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upgp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train (or load) a backdoored model and evaluate it")
    _scenario_args(p_train)
    p_train.set_defaults(func=cmd_train)
    p_def = sub.add_parser("defend", help="run a defense on a (cached) backdoored model")
    _scenario_args(p_def)
    p_def.add_argument("--defense", default="upgp", help=f"one of: {', '.join(sorted(DEFENSES))}")
    p_def.add_argument("--no-projection", action="store_true",
                       help="unlearn (and repair) without the null-space projection (ablation)")
    p_def.add_argument("--repair", type=int, default=0, metavar="STEPS",
                       help="upgp: add step 5, STEPS projected repair steps per round "
                            "(UPGPConfig.with_repair; removal then aims 0.05 lower)")
    p_def.add_argument("--rounds", type=int, default=3,
                       help="with --repair: removal + repair rounds at most (default 3)")
    p_def.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set projection=layer")
    p_def.set_defaults(func=cmd_defend)
    p_sw = sub.add_parser("sweep", help="defenses x attacks x archs x seeds into a resumable table")
    p_sw.add_argument("--defenses", nargs="+", required=True, help=", ".join(sorted(DEFENSES)))
    p_sw.add_argument("--attacks", nargs="+", default=["badnets"])
    p_sw.add_argument("--archs", nargs="+", default=["preact_resnet18"])
    p_sw.add_argument("--seeds", nargs="+", type=int, default=[0])
    p_sw.add_argument("--preset", default="cpu", help=f"one of: {', '.join(PRESETS)}")
    p_sw.add_argument("--data", help="ImageFolder copy of CIFAR-10 (else $UPGP_DATA, else download)")
    p_sw.add_argument("--out", type=Path, default=Path("sweep.csv"), help="results table (CSV)")
    p_sw.add_argument("--quiet", action="store_true", help="no progress bars")
    _ray_args(p_sw, "the runs, one backdoored model a task,")
    p_sw.set_defaults(func=cmd_sweep)
    p_rep = sub.add_parser("reproduce", help="execute the book's notebooks with papermill")
    p_rep.add_argument("--preset", default="cpu", help=f"one of: {', '.join(PRESETS)}")
    p_rep.add_argument("--only", nargs="+", metavar="NAME", help="notebook names or numbers")
    p_rep.add_argument("--jobs", type=int, default=1,
                       help="notebooks run at a time (default 1)")
    _ray_args(p_rep, "first train the models the chapters lack")
    p_rep.set_defaults(func=cmd_reproduce)
    p_plan = sub.add_parser("plan", help="the models a chapter needs, which are cached, and the "
                                         "training time left")
    p_plan.add_argument("notebooks", nargs="*", help="notebook names or numbers")
    p_plan.add_argument("--all", action="store_true", help="every chapter")
    p_plan.add_argument("--preset", default="cpu", help=f"one of: {', '.join(PRESETS)}")
    p_plan.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="parameter of the one notebook named, e.g. -p attacks wanet")
    p_plan.add_argument("--data", help="ImageFolder copy of CIFAR-10 (else $UPGP_DATA)")
    p_plan.set_defaults(func=cmd_plan)
    p_run = sub.add_parser("run", help="rerun one notebook with other parameters into runs/")
    p_run.add_argument("notebook", help="notebook name, number or path")
    p_run.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                       help="parameter, e.g. -p attack wanet")
    p_run.add_argument("--output", type=Path, help="output folder (default runs/<name>-<params>)")
    p_run.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, DataUnavailableError, SweepIncomplete) as err:
        print(f"upgp: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
