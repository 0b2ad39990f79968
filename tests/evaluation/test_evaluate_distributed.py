"""``torchrun --nproc-per-node 2 -m salmap evaluate``: two gloo processes give the single-process results."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from _evaluate_support import PYTHON, rows_without_timing, save_lenet, subprocess_env, write_run

from salmap.cli import main
from salmap.evaluation.distributed import World


def test_world_shards_round_robin() -> None:
    items = list(range(7))
    shards = [World(rank=r, size=3).shard(items) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shards, [])) == items
    solo = World()
    assert solo.shard(items) == items and solo.gather("x") == ["x"] and solo.broadcast(5) == 5


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    lenet = save_lenet(tmp_path / "lenet")
    settings = dict(
        seed=2, batch_size=3, data={"name": "mnist-sample", "num": 13},
        models=[{"name": "lenet", "path": str(lenet)}],
        attacks=[{"attack": "fgsm", "params": {"eps": 0.2}},
                 {"attack": "pgd", "targets": "random", "params": {"eps": 0.1, "steps": 4}}],
        figures={"samples": 4}, explanations=[{"explainer": "gradient"}],
    )
    two = write_run(tmp_path / "two.yaml", output="two", **settings)
    proc = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "salmap", "evaluate", str(two), "--no-progress"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("evaluation finished") == 1  # rank 0 reports, rank 1 stays quiet

    one = write_run(tmp_path / "one.yaml", output="one", **settings)
    assert main(["evaluate", str(one), "--no-progress"]) == 0

    rows = rows_without_timing(tmp_path / "two")
    assert len(rows) == 2 * 13
    assert rows == rows_without_timing(tmp_path / "one")
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert s2["timings"]["processes"] == 2 and s1["timings"]["processes"] == 1
    drop = {"seconds", "throughput"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in s2["results"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in s1["results"]]
    # 10 attack units (2 attacks x 5 batches) and 1 explanation unit, shared among the ranks
    assert len(list((tmp_path / "two" / "batches").glob("m*-a*.jsonl"))) == 10
    assert len(list((tmp_path / "two" / "batches").glob("m*-e*.jsonl"))) == 1
    assert (tmp_path / "two" / "report.html").is_file()
