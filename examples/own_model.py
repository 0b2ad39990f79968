"""Your own model, end to end: a normalised 3x224x224 colour classifier attacked (JSMA, PGD) and
explained (Grad-CAM, occlusion), from Python and from the command line.

    python examples/own_model.py --out /tmp/own-model            # a few minutes on a laptop CPU
    python examples/own_model.py --out /tmp/own-model --quick    # the test's short version

The classifier is salmap's resnet18 (random weights here: bring your own trained one), which,
like torchvision's ImageNet models, expects ``(x - mean) / std`` input. ``Normalized`` puts the
normalisation inside the model, so attacks and explanations work in pixel space: bounds
``[0, 1]`` per channel, budgets such as ``eps = 4/255`` in pixel units. The images are
photographs of any size (cut from scikit-learn's two sample pictures), streamed from a
folder and resized to 224 (shorter side) and centre-cropped.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from salmap import data, models
from salmap.attacks import JSMA, PGD
from salmap.cli import main as salmap_cli
from salmap.explain import GradCAM, Occlusion
from salmap.models import Normalized

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def photo_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """Crops of mixed sizes from scikit-learn's sample photographs: class 0 from one, class 1 from the other."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    for c, photo in enumerate(load_sample_images().images):
        (root / f"photo{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(180, 400)), int(rng.integers(180, 400))
            top, left = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
            suffix = ".jpg" if i % 2 else ".png"
            Image.fromarray(photo[top : top + h, left : left + w]).save(root / f"photo{c}" / f"{i:03d}{suffix}")
    return root


def build_checkpoint(folder: Path) -> Path:
    """A normalised resnet18 saved as a checkpoint folder; model.json records the normalisation."""
    torch.manual_seed(0)
    net = models.build("resnet18", in_channels=3, num_classes=2)
    models.save(Normalized(net, MEAN, STD), folder, {"input_shape": [3, 224, 224], "bounds": [0.0, 1.0],
                                                    "class_names": ["photo0", "photo1"]})
    return folder


def from_python(checkpoint: Path, images: Path, quick: bool) -> dict[str, float]:
    model = models.load(checkpoint)  # a Normalized(resnet18) again, read from model.json
    ds = data.load_dataset(f"folder:{images}", "all", image_size=224, channels=3)
    n = 2 if quick else 8
    x, y = ds.x[:n], ds.y[:n]  # only these images are decoded
    figures: dict[str, float] = {}

    pgd = PGD(model, eps=4 / 255, step=1 / 255, steps=2 if quick else 40)
    res = pgd(x, y=y)
    figures["pgd_success"] = res.success_rate
    figures["pgd_linf"] = float(res.linf.max())

    # JSMA on 150,528 features: the pair search among the most promising candidates
    jsma = JSMA(model, theta=1.0, gamma=0.00005 if quick else 0.002, candidates=64, strict_targets=False)
    res = jsma(x, target=(y + 1) % 2)
    figures["jsma_success"] = res.success_rate
    figures["jsma_l0"] = float(res.l0.max())

    cam = GradCAM(model, layer="layer4").attribute(x, target=y)  # the network's own layer name
    occ = Occlusion(model, patch=56, stride=56, fill="grey").attribute(x, target=y)
    figures["gradcam_shape"] = list(cam.shape)  # type: ignore[assignment]
    figures["occlusion_shape"] = list(occ.shape)  # type: ignore[assignment]
    return figures


def from_cli(checkpoint: Path, images: Path, out: Path, quick: bool) -> None:
    n = "2" if quick else "8"
    common = ["--model", str(checkpoint), "--data", f"folder:{images}", "--split", "all", "--image-size", "224",
              "-n", n, "--batch-size", "4"]
    runs = [
        ["attack", "pgd", *common, "--eps", str(4 / 255), "--step", str(1 / 255), "--steps", "2" if quick else "40",
         "--out", str(out / "pgd")],
        ["attack", "jsma", *common, "--gamma", "0.00005" if quick else "0.002", "--candidates", "64",
         "--targeted", "next", "--out", str(out / "jsma")],
        ["explain", *common, "--method", "gradcam", "--method", "occlusion", "--layer", "layer4", "--patch", "56",
         "--stride", "56", "--fill", "grey", "--out", str(out / "explain")],
    ]
    # The same model without model.json's normalisation: --mean/--std on the command line.
    plain = out / "resnet18-plain"
    models.save(models.load(checkpoint).model, plain, {"input_shape": [3, 224, 224]})
    runs.append(["attack", "pgd", "--model", str(plain), "--mean", ",".join(map(str, MEAN)),
                 "--std", ",".join(map(str, STD)), *common[2:], "--eps", str(4 / 255), "--step", str(1 / 255),
                 "--steps", "2" if quick else "40", "--out", str(out / "pgd-flags")])
    for args in runs:
        print("salmap", shlex.join(args), flush=True)
        if salmap_cli(args) != 0:  # the same as running the command in a shell
            raise SystemExit(f"salmap {args[0]} failed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quick", action="store_true", help="two images and very few iterations (the test)")
    args = p.parse_args(argv)
    out = Path(args.out)
    images = photo_folder(out / "photos", per_class=3 if args.quick else 12)
    checkpoint = build_checkpoint(out / "resnet18-normalized")
    figures = from_python(checkpoint, images, args.quick)
    (out / "python.json").write_text(json.dumps(figures, indent=2))
    print("from Python:", json.dumps(figures))
    from_cli(checkpoint, images, out, args.quick)
    print(f"command-line results in {out}/pgd, {out}/jsma, {out}/explain and {out}/pgd-flags")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
