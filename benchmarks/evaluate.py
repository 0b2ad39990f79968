"""Evaluation runner figures: demo wall time, throughput with 1 and 2 processes, resumable-write overhead.

- ``demo``: wall time of ``salmap demo`` (the lenet cached, so the tour without training).
- ``throughput``: ``salmap evaluate`` of FGSM (eps 0.1) and JSMA (theta 1, gamma 0.145,
  random targets) on ``-n`` test images (1,000 by default) of mnist-sample, as one process
  and as two gloo processes (``torch.distributed.run --nproc-per-node 2``), one thread
  each; images per second of the run's wall time (figures and report off) and the
  scaling factor (two processes over one).
- ``resume overhead``: FGSM over the images in batches of 100 and 10, once through the
  runner (every batch committed to its own file, fsync'd and renamed) and once as a plain
  loop of the same attack calls that writes nothing; the difference is what resumability costs.

Everything runs on ``--device`` (default ``auto``: CUDA when available, else the CPU): the run
files' ``device``, ``salmap demo --device`` and the plain loop's model and batches.

Run: ``python benchmarks/evaluate.py [--quick] [--model /work/cache/lenet] [-n 1000] [--device auto]``
(``--quick``: 100 images, 20 for JSMA, no demo; ``--jsma-num`` sets JSMA's count alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _device import add_device_flag, announce
from _timing import synchronize

from salmap import models
from salmap.cli.common import print_table
from salmap.evaluation.config import parse_config
from salmap.evaluation.execute import build, run_attack
from salmap.evaluation.resources import load_model
from salmap.evaluation.runner import evaluate, prepare

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = {
    "fgsm": {"attack": "fgsm", "params": {"eps": 0.1}},
    "jsma": {"attack": "jsma", "targets": "random", "params": {"theta": 1.0, "gamma": 0.145}},
}


def model_path(given: str | None, work: Path) -> Path:
    if given:
        return Path(given)
    cache = Path("/work/cache/lenet")
    if (cache / "model.json").is_file():
        return cache
    from salmap.cli.demo import cached_lenet

    cached_lenet(work / "lenet", 12)
    return work / "lenet"


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run_file(folder: Path, model: Path, attack: str, num: int, batch: int, device: str) -> Path:
    settings = {"output": str(folder / "out"), "batch_size": batch, "device": device,
                "data": {"name": "mnist-sample", "num": num},
                "models": [{"name": "lenet", "path": str(model)}], "attacks": [ATTACKS[attack]],
                "figures": False, "report": False}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def throughput(model: Path, attack: str, num: int, processes: int, work: Path, device: str) -> dict[str, float]:
    run = run_file(work / f"{attack}-{processes}", model, attack, num, 100 if attack == "fgsm" else 10, device)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] \
        if processes > 1 else [sys.executable]
    start = time.perf_counter()
    subprocess.run([*launcher, "-m", "salmap", "evaluate", str(run), "--no-progress"], env=env(), check=True,
                   stdout=subprocess.DEVNULL)
    command = time.perf_counter() - start
    summary = json.loads((run.parent / "out" / "summary.json").read_text())
    wall = summary["timings"]["wall_seconds"]
    result = summary["results"][0]
    return {"attack": attack, "processes": processes, "images": num, "wall_s": wall, "command_s": command,
            "images_per_s": num / wall, "success_rate": result["success_rate"]}


def overhead(model: Path, num: int, batch: int, work: Path, device: str) -> dict[str, float]:
    torch.set_num_threads(1)
    raw = yaml.safe_load(run_file(work / f"overhead-{batch}", model, "fgsm", num, batch, device).read_text())
    cfg = parse_config(raw)
    prep = prepare(cfg)
    loaded = load_model(str(model), device)
    attack = build(prep, prep.attack_units()[0], loaded)
    synchronize(device)
    start = time.perf_counter()
    for i in range(0, num, batch):
        x, y = prep.dataset.x[i : i + batch].to(device), prep.dataset.y[i : i + batch].to(device)
        run_attack(attack, x, y, None, loaded.module(x).detach())
    synchronize(device)
    plain = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(cfg, progress=False)
    runner = time.perf_counter() - start
    return {"batch_size": batch, "batches": -(-num // batch), "plain_s": plain, "runner_s": runner,
            "overhead_s": runner - plain, "overhead_pct": 100 * (runner - plain) / plain}


def demo_time(model: Path, work: Path, device: str) -> float:
    out = work / "demo"
    out.mkdir(parents=True, exist_ok=True)
    target = out / "lenet"
    if not target.exists():
        net, meta = models.load_with_meta(model)
        models.save(net, target, meta)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "salmap", "demo", "--out", str(out), "--device", device], env=env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 images, no demo")
    parser.add_argument("--model", help="lenet checkpoint (default /work/cache/lenet, else train one)")
    parser.add_argument("-n", "--num", type=int, default=None, help="images (default 1000; 100 with --quick)")
    parser.add_argument("--jsma-num", type=int, default=None,
                        help="images for JSMA (default: as -n; 20 with --quick): exact JSMA costs ~0.1-1 s an image")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo timing")
    add_device_flag(parser)
    args = parser.parse_args()
    device = announce(args.device)
    num = args.num or (100 if args.quick else 1000)
    jsma_num = args.jsma_num or (20 if args.quick else num)
    with tempfile.TemporaryDirectory(prefix="salmap-bench-evaluate-") as tmp:
        work = Path(tmp)
        model = model_path(args.model, work)
        print(f"model {model}; {num} images of mnist-sample (test); one thread per process; torch {torch.__version__}")
        if not (args.quick or args.no_demo):
            print(f"\ndemo wall time (lenet cached): {demo_time(model, work, device):.1f} s")
        # two ranks on CUDA take a GPU each (cuda:LOCAL_RANK): with one GPU, one process only
        two_ranks = not device.startswith("cuda") or torch.cuda.device_count() >= 2
        if not two_ranks:
            print("one GPU: the two-process runs are skipped (each rank takes a GPU of its own)")
        rows = []
        for attack in ATTACKS:
            n = jsma_num if attack == "jsma" else num
            one = throughput(model, attack, n, 1, work, device)
            rows.append(one)
            if two_ranks:
                two = throughput(model, attack, n, 2, work, device)
                two["scaling"] = two["images_per_s"] / one["images_per_s"]
                rows.append(two)
        print("\nthroughput (salmap evaluate, figures and report off)")
        print_table(rows, ["attack", "processes", "images", "wall_s", "command_s", "images_per_s", "scaling",
                           "success_rate"])
        print("\nresumable writing overhead (FGSM)")
        print_table([overhead(model, num, b, work, device) for b in (100, 10)],
                    ["batch_size", "batches", "plain_s", "runner_s", "overhead_s", "overhead_pct"])


if __name__ == "__main__":
    main()
