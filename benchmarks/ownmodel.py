"""Your own model at real size: JSMA, PGD-40 and Grad-CAM on a normalised 3x224x224 resnet18 at
batch 32 (images/s and peak memory, each in a fresh process), and the peak memory of streamed
``folder:`` runs (``salmap attack``, ``salmap explain``, ``salmap evaluate``) at 200 and 2,000 images.

    python benchmarks/ownmodel.py [--device auto|cpu|cuda] [--threads N] [--batch 32]
                                  [--only jsma,pgd,gradcam,stream] [--stream 200,2000]
                                  [--stream-commands attack,explain,evaluate] [--jsma-gamma 0.0005]

The resnet18 has random weights (the cost does not depend on them) and is wrapped in
``Normalized`` with the ImageNet mean/std; inputs are uniform random pixels in [0, 1].
JSMA searches pairs among the 64 most promising features (``candidates=64``; the exact
search over 150,528 features is quadratic) with ``gamma`` small enough for a benchmark.
Each method runs once untimed on 2 images (warm-up), then once timed on the batch: wall time
(``images_per_s``) and the process's CPU time (``images_per_cpu_s``: with ``--threads 1`` on a
shared, loaded CPU it is the figure that does not depend on the other jobs). Peak memory
is the process's ``VmHWM`` (RSS; for CUDA also ``torch.cuda.max_memory_allocated`` of the timed run).

The streamed runs use a folder of mixed-size crops (80 to 300 px, PNG and JPEG) of scikit-learn's
sample photographs, ``--image-size 224``, batch 32 and a small CNN (``module:factory``); each
command runs in a fresh process per folder size, so the figures say whether peak memory grows
with the number of images (it should not: a streamed run holds one batch). ``--device`` is
``auto`` by default (CUDA when available) and printed; ``--threads N`` sets torch's CPU threads
in every process (``OMP_NUM_THREADS`` is passed on as well).
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import peak_rss_kib  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def one_method(method: str, device: str, batch: int, jsma_gamma: float) -> dict[str, float]:
    """Run one method once on one batch in this (fresh) process; returns its figures."""
    from salmap import models
    from salmap.attacks import JSMA, PGD
    from salmap.explain import GradCAM
    from salmap.models import Normalized

    torch.manual_seed(0)
    model = Normalized(models.build("resnet18", in_channels=3, num_classes=1000), MEAN, STD).to(device).eval()
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    def run_on(xs: torch.Tensor, ys: torch.Tensor):
        if method == "pgd":
            return PGD(model, eps=4 / 255, step=1 / 255, steps=40)(xs, y=ys)
        if method == "jsma":
            return JSMA(model, theta=1.0, gamma=jsma_gamma, candidates=64, strict_targets=False)(xs, target=(ys + 1) % 1000)
        return GradCAM(model, layer="layer4").attribute(xs, target=ys)

    run_on(x[:2], y[:2])  # warm-up (kernel selection, allocator), not timed

    def run():
        return run_on(x, y)

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    out = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # on a shared CPU the wall time depends on the load; the process's CPU time much less so
    figures = {"method": method, "device": device, "batch": batch, "seconds": round(seconds, 3),
               "images_per_s": round(batch / seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
               "images_per_cpu_s": round(batch / cpu_seconds, 3), "peak_rss_mib": round(peak_rss_kib() / 1024, 1)}
    if device.startswith("cuda"):
        figures["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if method != "gradcam":
        figures["success_rate"] = round(out.success_rate, 3)  # type: ignore[union-attr]
        figures["mean_iterations"] = round(float(out.iterations.float().mean()), 2)  # type: ignore[union-attr]
    return figures


def photo_folder(root: Path, count: int) -> Path:
    """``count`` JPEG/PNG crops of mixed sizes (80 to 300 px) from scikit-learn's sample photographs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = photos[i % 2]
        h, w = int(rng.integers(80, 300)), int(rng.integers(80, 300))
        top, left = int(rng.integers(0, img.shape[0] - h)), int(rng.integers(0, img.shape[1] - w))
        Image.fromarray(img[top : top + h, left : left + w]).save(root / f"class{i % 2}" / f"{i:05d}{'.jpg' if i % 2 else '.png'}")
    return root


PEAK = """
import json, sys
sys.path.insert(0, {bench!r})
import torch
threads = {threads!r}
if threads:
    torch.set_num_threads(threads)
from _memory import peak_rss_kib
from salmap.cli import main
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "peak_rss_mib": round(peak_rss_kib() / 1024, 1)}}))
"""

TINY = """
import torch
from torch import nn


def net(classes=2):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, classes))
"""

#: the command line of each streamed command (after ``salmap``), without --out and -n
STREAM_COMMANDS = {
    "attack": ["attack", "fgsm", "--eps", "0.03"],
    "explain": ["explain", "--method", "gradient"],
    "evaluate": ["evaluate", "--attack", "fgsm:eps=0.03", "--no-progress", "--no-report"],
}


def stream_command(command: str, root: Path, n: int, device: str, out: Path) -> list[str]:
    """``salmap COMMAND`` on the first ``n`` images of the folder ``root`` (224 x 224, batch 32)."""
    return [*STREAM_COMMANDS[command], "--model", "bench_net:net", "--allow-code", "--data", f"folder:{root}",
            "--split", "all", "--image-size", "224", "-n", str(n), "--batch-size", "32", "--device", device,
            "--out", str(out)]


def stream_memory(counts: list[int], device: str, commands: list[str], threads: int | None,
                  folder: Path | None = None) -> list[dict[str, object]]:
    """Peak RSS of each streamed command per folder size, each run in a fresh process.

    ``folder``: an existing photo folder of at least ``max(counts)`` images to reuse (else
    one is written to a temporary folder).
    """
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = folder if folder is not None else photo_folder(Path(tmp) / "photos", max(counts))
        (Path(tmp) / "bench_net.py").write_text(TINY)
        script = Path(tmp) / "peak.py"
        script.write_text(PEAK.format(bench=str(Path(__file__).resolve().parent), threads=threads))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, *sys.path])}
        for command in commands:
            for n in counts:
                start = time.perf_counter()
                out = subprocess.run([sys.executable, str(script),
                                      *stream_command(command, root, n, device, Path(tmp) / f"{command}{n}")],
                                     capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    raise RuntimeError(f"salmap {command} on {n} images failed:\n{out.stderr[-2000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"command": command, "images": n, "peak_rss_mib": result["peak_rss_mib"],
                             "seconds": round(time.perf_counter() - start, 1)})
    return rows


def main() -> None:
    from salmap.devices import resolve_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in every process (default torch's)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--only", default="jsma,pgd,gradcam,stream")
    p.add_argument("--stream", default="200,2000", help="folder sizes of the streamed runs (default 200,2000)")
    p.add_argument("--stream-commands", default="attack,explain,evaluate",
                   help="the streamed commands measured (default attack,explain,evaluate)")
    p.add_argument("--folder", type=Path, default=None,
                   help="reuse this photo folder for the streamed runs (default: write one to a temporary folder)")
    p.add_argument("--jsma-gamma", type=float, default=0.0005,
                   help="JSMA's budget, a fraction of the 150,528 features (default 0.0005: 75 features, 37 pairs)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps({**one_method(args.one, device, args.batch, args.jsma_gamma),
                          "threads": torch.get_num_threads()}))
        return
    print(f"device: {device} (--device {args.device}); torch threads: {torch.get_num_threads()}", flush=True)
    wanted = args.only.split(",")
    threads = ["--threads", str(args.threads)] if args.threads else []
    for method in ("jsma", "pgd", "gradcam"):
        if method in wanted:
            out = subprocess.run([sys.executable, __file__, "--one", method, "--device", device, *threads,
                                  "--batch", str(args.batch), "--jsma-gamma", str(args.jsma_gamma)],
                                 capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)
    if "stream" in wanted:
        counts = [int(n) for n in args.stream.split(",")]
        for row in stream_memory(counts, device, args.stream_commands.split(","), args.threads, args.folder):
            print(json.dumps({"method": f"streamed folder: salmap {row['command']} (224, batch 32)", **row}),
                  flush=True)


if __name__ == "__main__":
    main()
