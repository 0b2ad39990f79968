"""Defenses on mnist-sample with the lenet: clean and adversarial accuracy, transfer vs adaptive.

For no defense, the denoising autoencoder (trained on Gaussian noise and FGSM examples of
the lenet), block switching (K=4 channels) and FGSM adversarial training, the script
reports accuracy on the first ``-n`` test images, clean and under FGSM (eps 0.1/0.2/0.3),
PGD (eps 0.3), JSMA (theta 1, gamma 0.145, random targets) and ISI (relevance, L0), each

- ``transfer``: crafted on the undefended lenet (the setting of the defenses' papers),
- ``adaptive``: crafted on the defense itself (through the denoiser; EOT over all channels
  for block switching; white-box on the adversarially trained model),
- ``worst``: a sample counts only if it resists both,

and the training time of every defense. Defaults keep it CPU-friendly (the first 100 test
images, 2 training epochs per defense, i.e. per block-switching copy and for its upper part,
against the lenet's 10); ``--quick`` uses 40 images, 1 epoch, 10 PGD steps and 10 ISI
iterations. Every figure is over that small sample: one image is 1 point at n=100.

Run: ``python benchmarks/defenses.py [--quick] [--model /work/cache/lenet] [-n 100] [--epochs 2]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from salmap import data, models
from salmap.cli.common import print_table
from salmap.defenses import (
    DenoisingAutoencoder,
    Purified,
    adversarial_training,
    craft_transfer,
    default_attacks,
    evaluate_defense,
    train_block_switch,
    train_denoiser,
)
from salmap.defenses.evaluation import table_rows


def lenet(path: str | None, cache: Path) -> tuple[torch.nn.Module, dict, str]:
    """The trained lenet: ``--model``, else /work/cache/lenet, else trained once and cached."""
    for candidate in ([path] if path else []) + ["/work/cache/lenet"]:
        if candidate and (Path(candidate) / "model.json").is_file():
            model, meta = models.load_with_meta(candidate)
            return model, meta, candidate
    from salmap.cli.demo import cached_lenet

    model, meta, _ = cached_lenet(cache, epochs=10)
    return model, meta, str(cache)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="40 images, 1 epoch, fewer attack iterations")
    p.add_argument("--model", default=None, help="trained lenet checkpoint (default /work/cache/lenet)")
    p.add_argument("-n", "--num", type=int, default=None, help="test images (default 100, quick 40)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per defense (default 2, quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "salmap-bench" / "lenet"))
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n = args.num or (40 if args.quick else 100)
    epochs = args.epochs or (1 if args.quick else 2)
    pgd_steps, isi_iterations = (10, 10) if args.quick else (40, 30)

    model, meta, source = lenet(args.model, Path(args.cache))
    train = data.load_dataset("mnist-sample", "train")
    test = data.load_dataset("mnist-sample", "test")
    x, y = test.x[:n], test.y[:n]
    specs = default_attacks(pgd_steps=pgd_steps, isi_iterations=isi_iterations)
    print(f"lenet from {source}; {n} test images; {epochs} training epoch(s) per defense; "
          f"PGD {pgd_steps} steps, ISI {isi_iterations} iterations; {args.threads} thread(s)")

    start = time.perf_counter()
    transfer = craft_transfer(model, x, y, specs, batch_size=100, seed=0)
    print(f"transfer examples crafted on the lenet in {time.perf_counter() - start:.0f} s")

    defenses: list[tuple[str, torch.nn.Module, float]] = [("none", model, 0.0)]

    torch.manual_seed(0)
    denoiser = DenoisingAutoencoder(in_channels=1, width=32)
    report = train_denoiser(denoiser, train.x, noise_std=0.3, model=model, y=train.y, attack="fgsm", eps=0.3,
                            epochs=epochs, seed=0)
    defenses.append(("denoiser", Purified(model, denoiser), report.seconds))

    switched, report = train_block_switch(meta["arch"], train.x, train.y, channels=4, epochs=epochs, seed=0)
    defenses.append(("block-switch K=4", switched, report.seconds))

    torch.manual_seed(0)
    robust = models.build(meta["arch"]["name"], **meta["arch"].get("kwargs", {}))
    report = adversarial_training(robust, train.x, train.y, attack="fgsm", eps=0.3, epochs=epochs, seed=0)
    defenses.append(("adv-train FGSM", robust, report.seconds))

    rows, results = [], {}
    for name, defended, seconds in defenses:
        t0 = time.perf_counter()
        result = evaluate_defense(defended, model, x, y, specs, seed=0, transfer_examples=transfer)
        result["train_seconds"] = seconds
        results[name] = result
        rows.extend(table_rows(name, result, seconds))
        print(f"{name}: evaluated in {time.perf_counter() - t0:.0f} s")
    columns = ["defense", "attacks", "clean", *(s.name for s in specs), "train_s"]
    print()
    print_table(rows, columns)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; accuracy on {n} mnist-sample test images; "
          "'none' rows are white-box on the lenet itself")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
