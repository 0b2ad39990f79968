"""``salmap evaluate [run.yaml]``: run attacks and explanations over models and data; write
results.jsonl, summary.json, figures and a self-contained report.html.

The run is described by a YAML file, by flags, or by both (flags replace the file's
keys). The whole description is checked before any work and every problem is listed
with its key path. A killed run resumes where it stopped when the same command is run
again. Under ``torchrun --nproc-per-node N -m salmap evaluate run.yaml`` the batches are
shared among the processes (gloo on CPU, nccl on GPU) and rank 0 writes the results.

Example run file::

    output: runs/eval
    data: {name: mnist-sample, split: test, num: 1000}
    models: [{name: lenet, path: runs/lenet}]
    attacks:
      - {attack: fgsm, params: {eps: 0.1}}
      - {attack: jsma, targets: all, params: {theta: 1.0, gamma: 0.145}}
    explanations: [{explainer: gradient}]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from salmap import registry
from salmap.cli.checks import check_output_path, take
from salmap.cli.common import (
    add_device_arg,
    add_model_options,
    announce_device,
    model_options,
)
from salmap.cli.common import resolve_device as check_device
from salmap.cli.flags import parse_spec
from salmap.devices import resolve_device
from salmap.evaluation.config import ConfigError, load_split, parse_config, read_run_file
from salmap.evaluation.settings import RUN_TARGETING


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="run an evaluation (YAML or flags): results, summary, figures, HTML report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="run file (YAML); flags below replace its keys")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in the output folder")
    p.add_argument("--out", help="output folder (key: output)")
    p.add_argument("--model", action="append", metavar="PATH",
                   help="model checkpoint; repeat for several (key: models)")
    p.add_argument("--attack", action="append", metavar="NAME[:KEY=VALUE,...]",
                   help=f"attack with parameters, e.g. fgsm:eps=0.1; repeat for several; names: {', '.join(registry.attacks())}")
    p.add_argument("--targets", choices=[m for m in RUN_TARGETING if m in registry.CLASSIFIER_TARGETING],
                   help="targeting of the attacks given with --attack (default: the attack's own)")
    p.add_argument("--explain", action="append", metavar="NAME",
                   help=f"explainer for the overlays; repeat for several; names: {', '.join(registry.explainers())}")
    p.add_argument("--data", help="dataset name or kind:PATH (key: data.name)")
    p.add_argument("--split", choices=["train", "test", "all"], help="dataset split (key: data.split)")
    p.add_argument("-n", "--num", type=int, help="number of samples (key: data.num)")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="resize images: shorter side N, centre crop N x N; folder: data is streamed (key: data.image_size)")
    p.add_argument("--batch-size", type=int, help="samples per batch (key: batch_size)")
    p.add_argument("--seed", type=int, help="random seed (key: seed)")
    add_device_arg(p, default=None)
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--save-adv", action="store_true",
                   help="write every adversarial example losslessly to adversarial/*.safetensors "
                        "(key: save_adversarial; read back with salmap.evaluation.load_adversarial)")
    p.add_argument("--save-png", action="store_true",
                   help="also write them as 8-bit PNGs under png/ and count those no longer adversarial once "
                        "rounded (key: save_png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # --allow-code (a run file naming package.module:factory is refused without it; validation
    # never runs the code) is one of the global flags every command takes: salmap.cli._add_global_flags.
    add_model_options(p)  # they apply to the --model entries (keys: models[].normalization, ...)
    p.set_defaults(func=run, usage_error=p.error)


def parse_attack(text: str) -> dict[str, Any]:
    """``"fgsm:eps=0.1,seed=3"`` -> ``{"attack": "fgsm", "params": {"eps": "0.1", "seed": "3"}}``.

    Values stay text: validation converts them to each parameter's declared type (no YAML).
    """
    name, params = parse_spec(text, "--attack")
    return {"attack": name, "params": params}


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The run-file keys the flags set."""
    found: dict[str, Any] = {}
    if args.out is not None:
        found["output"] = args.out
    options = model_options(args)
    entry: dict[str, Any] = {}
    if options["normalization"] is not None:
        entry["normalization"] = options["normalization"]
    if options["output_key"] is not None:
        entry["output_key"] = options["output_key"]
    if options["model_args"]:
        entry["model_args"] = options["model_args"]
    if entry and not args.model:
        raise ValueError("--mean/--std, --output-key and --model-arg apply to --model entries; in a run file "
                         "use the keys models[].normalization, output_key and model_args")
    if args.model:
        found["models"] = [{"path": p, **entry} for p in args.model]
    if args.attack:
        found["attacks"] = [parse_attack(a) | ({"targets": args.targets} if args.targets else {}) for a in args.attack]
    if args.explain:
        found["explanations"] = [{"explainer": e} for e in args.explain]
    data = {k: v for k, v in (("name", args.data), ("split", args.split), ("num", args.num),
                              ("image_size", args.image_size)) if v is not None}
    if data:
        found["data"] = data
    for key, value in (("batch_size", args.batch_size), ("seed", args.seed), ("device", args.device)):
        if value is not None:
            found[key] = value
    if args.no_report:
        found["report"] = False
    if args.save_adv:
        found["save_adversarial"] = True
    if args.save_png:
        found["save_png"] = True
    return found


#: the run-file key each flag sets
FLAG_KEYS = {"output": "--out", "models": "--model", "attacks": "--attack", "explanations": "--explain",
             "data.name": "--data", "data.split": "--split", "data.num": "-n", "data.image_size": "--image-size",
             "batch_size": "--batch-size", "seed": "--seed", "device": "--device"}


#: the flag that sets each key of the ``--model`` entries
ENTRY_FLAGS = {"output_key": "--output-key", "normalization": "--mean/--std", "model_args": "--model-arg"}


def _flag_path(path: str, extra: dict[str, Any]) -> str:
    """``batch_size`` -> ``--batch-size (batch_size)`` when the flag gave the value; else ``path``
    (``models[0].output_key`` -> ``--output-key (models[0].output_key)``)."""
    entry = re.fullmatch(r"models\[(\d+)\]\.(\w+)(?:[.\[].*)?", path)
    if entry and entry[2] in ENTRY_FLAGS:
        given = extra.get("models", [])
        if int(entry[1]) < len(given) and entry[2] in given[int(entry[1])]:
            return f"{ENTRY_FLAGS[entry[2]]} ({path})"
    for key, flag in FLAG_KEYS.items():
        top, _, sub = key.partition(".")
        given = sub in extra.get(top, {}) if sub else top in extra
        if given and (path == key or path.startswith((f"{key}.", f"{key}["))):
            return f"{flag} ({path})"
    return path


def _take_flag_num(data: dict[str, Any], num: int) -> None:
    """``-n`` past the split takes all of it and says so, as the other commands' ``-n`` does; a run
    file's own ``data.num`` past it is refused by validation (the file is a specification)."""
    name, split = data.get("name", "mnist-sample"), data.get("split", "test")
    try:
        ds = load_split(name, split, data.get("image_size"), data.get("channels"))
    except (ValueError, TypeError, OSError):
        return  # validation names what is wrong with the data keys
    data["num"] = take(num, len(ds), name, split, num)


def run(args: argparse.Namespace) -> int:
    from salmap.evaluation.runner import REPORT, RESULTS, SUMMARY, evaluate

    if not args.config:  # the flags describe the run alone: say which are missing, like argparse does
        missing = [flag for flag, value in (("--model", args.model), ("--attack", args.attack or args.explain),
                                            ("--out", args.out)) if not value]
        if len(missing) == 3:
            args.usage_error("a run file or flags are needed: salmap evaluate run.yaml, or salmap evaluate "
                             "--model PATH --attack NAME --out DIR (--explain NAME instead of --attack explains only)")
        missing = [f"{flag} (or --explain NAME to explain only)" if flag == "--attack" else flag for flag in missing]
        if missing:
            args.usage_error(f"without a run file, the following arguments are required: {', '.join(missing)}")
    extra = overrides(args)
    raw: Any = extra
    source, base = "flags", Path.cwd()
    if args.config:
        raw = read_run_file(args.config)
        source, base = f"run file {args.config}", Path(args.config).resolve().parent
        if isinstance(raw, dict):  # data flags are merged into the file's data mapping, not replacing it
            data = raw["data"] if isinstance(raw.get("data"), dict) else {}
            raw = {**raw, **extra, **({"data": {**data, **extra["data"]}} if "data" in extra else {})}
    if args.num is not None and isinstance(raw, dict):
        _take_flag_num(raw["data"], args.num)
    try:
        cfg = parse_config(raw, source=source, base=base, allow_code=args.allow_code, trust_model=args.trust_model)
    except ConfigError as err:  # a value a flag gave is named by its flag too
        raise ConfigError([(_flag_path(path, extra), text) for path, text in err.problems], source) from None
    if cfg.output:
        check_output_path(cfg.output, "output")
    cfg.device = check_device(cfg.device, "device")  # the run file's too: CUDA or MPS missing fails before any work
    announce_device(resolve_device(cfg.device))
    outcome = evaluate(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    if outcome.summary is None:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    rows = [{k: r[k] for k in ("model", "attack", "rows", "clean_accuracy", "adversarial_accuracy", "success_rate",
                               "l0_mean_success", "l2_mean_success", "linf_mean_success", "throughput")}
            for r in outcome.summary["results"]]
    from salmap.cli.common import print_table

    if rows:
        print_table(rows, list(rows[0]))
    for done in outcome.summary.get("explanations", []):
        print(f"{done['model']}: {done['explainer']} explained {done['samples']} samples"
              + (f" ({done['figure']})" if done.get("figure") else ""))
    for entry in outcome.summary.get("robustness", []):
        if entry["robust_accuracy"] is not None and entry["robust_accuracy"] == entry["robust_accuracy"]:
            print(f"{entry['model']}: robust accuracy {entry['robust_accuracy']:.4f} under the worst case of "
                  f"{len(entry['attacks'])} attack(s) (clean {entry['clean_accuracy']:.4f})")
    out = outcome.output.resolve()
    resumed = f" ({outcome.resumed} batches resumed from an earlier attempt)" if outcome.resumed else ""
    print(f"evaluation finished{resumed}: {out / RESULTS}, {out / SUMMARY}"
          + (f", report {out / REPORT}" if cfg.report else ""))
    return 0
