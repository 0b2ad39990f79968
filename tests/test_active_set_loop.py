"""gradients.active_set_loop: the one loop of the iterative attacks that drops finished samples."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from salmap.gradients import active_set_loop


def collatz_step(seen: list[list[int]] | None = None):
    """A step with a per-sample stopping rule: halve even values, 3x+1 odd ones, finished at 1."""

    def step(rows: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        if seen is not None:
            seen.append(rows["id"].tolist())
        x = rows["x"]
        going = x != 1
        return going, {"x": torch.where(x % 2 == 0, x // 2, 3 * x + 1), "id": rows["id"] + 100}

    return step


def collatz_reference(value: int, budget: int | None) -> tuple[int, int]:
    """Slow per-sample reference: (final value, steps taken)."""
    steps = 0
    while value != 1 and (budget is None or steps < budget):
        value = value // 2 if value % 2 == 0 else 3 * value + 1
        steps += 1
    return value, steps


@pytest.mark.parametrize("budget", [None, 0, 1, 5, 200])
def test_matches_a_per_sample_reference_and_respects_the_budget(budget: int | None) -> None:
    values = [1, 6, 7, 27, 2, 97, 1, 3]
    x = torch.tensor(values)
    ids = torch.arange(len(values))
    state = {"x": x.clone(), "id": ids.clone()}
    iterations = active_set_loop(state, collatz_step(), budget)
    want = [collatz_reference(v, budget) for v in values]
    assert state["x"].tolist() == [v for v, _ in want]
    assert iterations.tolist() == [s for _, s in want]
    assert iterations.dtype == torch.long
    # Only stepped samples get their update written back: "id" grew by 100 per step taken.
    assert (state["id"] - ids).tolist() == [100 * s for _, s in want]


def test_finished_samples_are_never_stepped_again_and_rows_come_in_sample_order() -> None:
    seen: list[list[int]] = []
    x = torch.tensor([8, 1, 3, 2])
    iterations = active_set_loop({"x": x, "id": torch.arange(4)}, collatz_step(seen))
    assert iterations.tolist() == [3, 0, 7, 1]
    # Every call sees only the samples still running (ids grow by 100 a step), in ascending order.
    assert [[i % 100 for i in call] for call in seen] == [[0, 1, 2, 3], [0, 2, 3], [0, 2], [0, 2]] + [[2]] * 4
    assert all(call == sorted(call) for call in seen)


def test_batched_equals_one_by_one() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(1, 60, (16,), generator=gen)
    batched = {"x": x.clone(), "id": torch.zeros(16, dtype=torch.long)}
    it = active_set_loop(batched, collatz_step(), 12)
    for i in range(16):
        alone = {"x": x[i : i + 1].clone(), "id": torch.zeros(1, dtype=torch.long)}
        assert active_set_loop(alone, collatz_step(), 12).tolist() == [int(it[i])]
        assert torch.equal(alone["x"], batched["x"][i : i + 1])


def test_the_state_is_updated_in_place_and_multidimensional_rows_work() -> None:
    x = torch.zeros(3, 2, 2)
    limit = torch.tensor([1.0, 3.0, 0.0])

    def step(rows: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        going = rows["x"].flatten(1).sum(1) < 4 * rows["limit"]
        return going, {"x": rows["x"] + 1}

    iterations = active_set_loop({"x": x, "limit": limit}, step)
    assert iterations.tolist() == [1, 3, 0]
    assert x[:, 0, 0].tolist() == [1.0, 3.0, 0.0]
    assert limit.tolist() == [1.0, 3.0, 0.0]  # not named in updates: untouched


def test_an_empty_batch_runs_no_step() -> None:
    def step(rows: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise AssertionError("no step for an empty batch")

    assert active_set_loop({"x": torch.zeros(0, 3)}, step).shape == (0,)


def test_bad_state_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="state must hold at least one"):
        active_set_loop({}, collatz_step())
    with pytest.raises(ValueError, match="share their first dimension 3, got 'b' of shape \\(2,\\)"):
        active_set_loop({"a": torch.ones(3), "b": torch.ones(2)}, collatz_step())
    with pytest.raises(ValueError, match="max_steps must be >= 0"):
        active_set_loop({"x": torch.ones(2)}, collatz_step(), -1)


def test_nothing_is_gathered_while_every_sample_runs_and_none_means_all_stepped() -> None:
    x = torch.tensor([0.0, 0.0, 5.0])
    state = {"x": x}
    own: list[bool] = []

    def step(rows: dict[str, Tensor]) -> tuple[Tensor | None, dict[str, Tensor]]:
        own.append(rows["x"] is x)
        if len(own) <= 2:  # everyone steps: reported as None, the state changed in place
            rows["x"] += 1
            return None, {"x": rows["x"]}
        going = rows["x"] < 4
        return going, {"x": rows["x"] + 1}

    iterations = active_set_loop(state, step, max_steps=6)
    assert own == [True, True, True, False, False]
    assert x.tolist() == [4.0, 4.0, 7.0] and iterations.tolist() == [4, 4, 2]


def test_none_after_a_sample_finished_writes_the_active_rows() -> None:
    state = {"x": torch.tensor([0.0, 9.0, 0.0])}
    calls = []

    def step(rows: dict[str, Tensor]) -> tuple[Tensor | None, dict[str, Tensor]]:
        calls.append(rows["x"].numel())
        if len(calls) == 1:
            return rows["x"] < 5, {"x": rows["x"] + 1}
        return None, {"x": rows["x"] + 10}

    iterations = active_set_loop(state, step, max_steps=3)
    assert calls == [3, 2, 2]
    assert state["x"].tolist() == [21.0, 9.0, 21.0] and iterations.tolist() == [3, 0, 3]
