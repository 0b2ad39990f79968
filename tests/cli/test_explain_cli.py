"""``salmap explain`` end to end on a tiny saved model; pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from salmap import models
from salmap.cli import main
from salmap.plot import attack_grid, explanation_grid, to_heat


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random lenet checkpoint and a small npz dataset of 28x28 images (fast to load)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("explain")
    models.save(models.build("lenet"), root / "lenet", {"bounds": [0.0, 1.0]})
    gen = np.random.default_rng(0)
    x = (gen.random((8, 28, 28)) < 0.2).astype(np.float32)
    np.savez(root / "d.npz", x=x, y=np.arange(8) % 10, x_test=x, y_test=np.arange(8) % 10)
    return root


def explain(files, out, *extra):
    """The exit status of ``salmap explain`` (usage errors exit 2 from the parser)."""
    try:
        return main(["explain", "--model", str(files / "lenet"), "--data", f"npz:{files / 'd.npz'}",
                     "--out", str(out), *extra])
    except SystemExit as stop:
        return int(stop.code or 0)


def test_explain_several_methods_with_attack(files, tmp_path, capsys):
    out = tmp_path / "out"
    rc = explain(files, out, "-n", "5", "--batch-size", "3",
               "--method", "gradient,occlusion", "--method", "gradcam", "--layer", "features.6",
               "--patch", "7", "--stride", "7", "--target", "label", "--attack", "fgsm", "--eps", "0.2",
               "--rows", "2")
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["gradient", "occlusion", "gradcam"]
    assert summary["images"] == 5 and len(summary["methods"]["occlusion"]["samples"]) == 5
    assert "patch=(7,)" in summary["methods"]["occlusion"]["settings"]
    first = summary["methods"]["gradient"]["samples"][0]
    assert first["min"] >= 0 and first["max"] >= first["mean"] and len(first["peak"]) == 2
    attack = summary["attack"]
    assert attack["name"] == "fgsm" and "eps=0.2" in attack["settings"]
    cmp = attack["methods"]["gradcam"]["before_vs_after"]
    assert len(cmp) == 5 and all(0.0 <= c["top_iou"] <= 1.0 for c in cmp)
    assert (out / "explain.png").stat().st_size > 1000 and (out / "attack.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "occlusion" in printed and "summary written to" in printed


def test_explain_lrp_when_available(files, tmp_path):
    pytest.importorskip("salmap.explain.lrp")
    rc = explain(files, tmp_path, "-n", "2", "--method", "lrp")
    assert rc == 0
    assert "lrp" in json.loads((tmp_path / "summary.json").read_text())["methods"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "gradient,saliency"], "--method must be among"),
        (["--method", "gradcam", "--layer", "featurs.6"], "--layer 'featurs.6' is not a layer of --model "),
        (["--method", "occlusion", "--patch", "40"], "larger than the input"),
        (["--method", "occlusion", "--stride", "0"], "argument --stride: stride must be in [1, inf), got 0"),
        (["--method", "occlusion", "--fill", "black"], "argument --fill: fill must be one of"),
        (["--target", "seven"], "--target must be pred, label or a class index"),
        (["--region", "0:4,0:4"], "--region is for segmenters"),
        (["--attack", "nope"], "--attack must be one of"),
    ],
)
def test_bad_arguments(files, tmp_path, capsys, extra, message):
    rc = explain(files, tmp_path, "-n", "2", *extra)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_to_heat_reductions_and_grids(tmp_path):
    pos = torch.rand(2, 3, 5, 5)
    assert torch.equal(to_heat(pos), pos.amax(dim=1))
    signed = pos - 0.5
    assert torch.equal(to_heat(signed), signed.sum(dim=1))
    x = torch.rand(2, 3, 5, 5)
    path = explanation_grid(x, {"a": pos, "b": signed[:, :1]}, tmp_path / "g.png", labels=torch.tensor([0, 1]))
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="same methods"):
        attack_grid(x, x, {"a": pos}, {"b": pos}, tmp_path / "h.png")
    with pytest.raises(ValueError, match="maps must be"):
        to_heat(torch.rand(2, 5, 5))


def test_segmenter_region_end_to_end(tmp_path, monkeypatch):
    from salmap.data.base import Dataset

    torch.manual_seed(0)
    models.save(models.build("unet", in_channels=1, num_classes=3, base=4, depth=2), tmp_path / "unet")
    x = torch.rand(3, 1, 16, 16)
    y = torch.zeros(3, 16, 16, dtype=torch.long)
    y[:, 4:9, 4:9] = 2
    ds = Dataset(x, y, ["background", "a", "b"], "toy-seg", task="segmentation")
    monkeypatch.setattr("salmap.cli.explain.load_data", lambda name, split, num, **_: ds)
    out = tmp_path / "out"
    rc = main(["explain", "--model", str(tmp_path / "unet"), "--out", str(out), "--method", "gradient,gradcam",
               "--layer", "merge.1", "--target", "2", "--region", "4:9,4:9"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["region"] == "4:9,4:9" and len(summary["methods"]["gradcam"]["samples"]) == 3
    assert (out / "explain.png").is_file()
    # other arguments: a different run, refused in the same folder unless --overwrite
    again = ["explain", "--model", str(tmp_path / "unet"), "--out", str(out), "--target", "label"]
    assert main(again) == 2
    assert main([*again, "--overwrite"]) == 0


def test_segmentation_label_target_and_region_parsing():
    from salmap.cli.explain import choose_target, parse_region

    y = torch.zeros(2, 4, 4, dtype=torch.long)
    y[0, :2] = 3
    y[0, 3, 0] = 1
    y[1, 1:3, 1:3] = 2
    classes, mask = choose_target("label", y, segmentation=True)
    assert classes.tolist() == [3, 2]
    assert torch.equal(mask, y == classes[:, None, None])
    region = parse_region("1:3,0:4", (4, 4))
    assert region.sum() == 8 and region[1:3].all()
    for bad in ("1:3", "3:1,0:2", "0:5,0:1", "a:b,c:d"):
        with pytest.raises(ValueError, match="--region must"):
            parse_region(bad, (4, 4))


def test_explain_resumes_and_recomputes_nothing(files, tmp_path, capsys, monkeypatch):
    """A second run with the same arguments and --out reads every unit back: no explainer or
    attack call, unit files untouched, the same summary; a lost unit is recomputed alone."""
    from salmap.explain import Explainer

    out = tmp_path / "out"
    args = ["-n", "5", "--batch-size", "2", "--method", "gradient,occlusion", "--patch", "7", "--stride", "7",
            "--attack", "fgsm", "--eps", "0.2", "--rows", "3"]
    assert explain(files, out, *args) == 0
    first = json.loads((out / "summary.json").read_text())
    units = sorted((out / "batches").glob("*.jsonl"))
    assert len(units) == 3 * 3  # 3 batches x (2 methods + the attack)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "batches").iterdir()}
    calls = []
    original = Explainer.attribute

    def counted(self, *a, **k):
        calls.append(type(self).__name__)
        return original(self, *a, **k)

    monkeypatch.setattr(Explainer, "attribute", counted)
    capsys.readouterr()
    assert explain(files, out, *args) == 0
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in (out / "batches").iterdir()} == stamps
    second = json.loads((out / "summary.json").read_text())
    for key in ("methods", "attack"):
        for part in (first, second):
            part[key] = json.loads(json.dumps(part[key]).replace("NaN", "null"))
    assert second["attack"]["summary"] == first["attack"]["summary"]
    assert second["attack"]["pred_after"] == first["attack"]["pred_after"]
    for name in ("gradient", "occlusion"):
        assert second["methods"][name]["samples"] == first["methods"][name]["samples"]
        assert second["attack"]["methods"][name] == first["attack"]["methods"][name]
    assert "9 units resumed" in capsys.readouterr().out
    (out / "batches" / "m000-e001-b000001.jsonl").unlink()  # occlusion, second batch
    assert explain(files, out, *args) == 0
    assert len(calls) == 2  # that batch before and after the attack


def test_explain_attack_runs_through_the_pipeline_with_the_metric_names_of_attack(files, tmp_path):
    """The attack of ``salmap explain --attack`` is a unit of the same execute step as ``salmap
    attack``: the same rows, and its summary carries the names of attack and evaluate."""
    common = ["--model", str(files / "lenet"), "--data", f"npz:{files / 'd.npz'}", "-n", "5", "--batch-size", "2",
              "--eps", "0.2", "--device", "cpu"]
    assert main(["attack", "fgsm", *common, "--out", str(tmp_path / "attack")]) == 0
    assert main(["explain", *common, "--attack", "fgsm", "--out", str(tmp_path / "explain")]) == 0
    attack = json.loads((tmp_path / "attack" / "results.json").read_text())["summary"]
    explained = json.loads((tmp_path / "explain" / "summary.json").read_text())
    summary = explained["attack"]["summary"]
    assert {"l0_mean", "l0_mean_success", "l2_mean", "l2_mean_success", "linf_mean", "success_rate"} <= set(summary)
    assert set(summary) == set(attack)
    for key in ("success_rate", "l0_mean", "l2_mean", "l2_mean_success", "l2", "clean_accuracy"):
        assert summary[key] == pytest.approx(attack[key], nan_ok=True)

    def rows(folder):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (folder / "results.jsonl").read_text().splitlines()]

    assert rows(tmp_path / "explain") == rows(tmp_path / "attack")
    assert explained["attack"]["pred_after"] == [r["pred_after"] for r in rows(tmp_path / "attack")]
    # the explanation rows: one a sample, with the map figures before and after the attack
    units = sorted((tmp_path / "explain" / "batches").glob("m000-e000-*.jsonl"))
    per_sample = [json.loads(line) for u in units for line in u.read_text().splitlines()]
    assert [r["index"] for r in per_sample] == list(range(5))
    assert all({"map", "after", "before_vs_after", "seconds"} <= set(r) for r in per_sample)


@pytest.mark.parametrize("rows", ["0", "-1"])
def test_explain_rows_must_be_positive_before_any_work(files, tmp_path, capsys, rows):
    out = tmp_path / "out"
    assert explain(files, out, "-n", "2", "--rows", rows) == 2  # was exit 1, KeyError: 'position', after the run
    assert f"--rows must be positive, got {rows}" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--method", "gradient", "--patch", "3"], "--patch applies to occlusion, which is not among the methods (gradient)"),
    (["--method", "gradient", "--layer", "features.3"], "--layer applies to gradcam"),
    (["--method", "occlusion", "--lrp-eps", "0.1"], "--lrp-eps applies to lrp"),
    (["--eps", "0.1"], "--eps is the attack's budget and needs --attack NAME"),
])
def test_explain_flags_that_would_change_nothing_are_refused(files, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert explain(files, out, "-n", "2", *flags) == 2  # were silently ignored
    assert message in capsys.readouterr().err
    assert not out.exists()
