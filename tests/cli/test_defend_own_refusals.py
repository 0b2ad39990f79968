"""``salmap defend`` on someone's own model refused in one line before any work: block switching without
a salmap architecture, a pickled or untrained model, attacks that cannot run on a TorchScript model
(refused when asked for, replaced in the default set)."""

from __future__ import annotations

from pathlib import Path

import _own_defend as shared
import pytest
import torch
from _own_defend import body, dae_args
from torch import nn

from salmap.cli import main

own = shared.own  # (a fixture)


@pytest.mark.parametrize("kind", ["block-switch", "dae+block-switch"])
def test_block_switching_needs_an_architecture_and_says_which_defenses_work(
        own: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["defend", kind, "--model", str(own / "pixels.pt"), "--data", "digits", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"--model {own / 'pixels.pt'} has no salmap architecture" in err and "dae or adv-train --fine-tune" in err
    assert not (tmp_path / "o").exists()


def test_a_pickled_or_untrained_model_is_refused_in_one_line(own: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(dae_args(str(own / "pickled.pt"), tmp_path / "p")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "never unpickled" in err and "Traceback" not in err
    torch.manual_seed(1)
    untrained = tmp_path / "untrained.pt"
    torch.jit.save(torch.jit.script(body().eval()), str(untrained))
    assert main(dae_args(str(untrained), tmp_path / "u")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--model {untrained} measured test accuracy" in err and "near chance" in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "u").exists()

def test_attacks_that_cannot_run_on_the_model_are_refused_or_replaced_before_training(
        own: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ISI's LRP relevance needs hooks, which a TorchScript model lacks: asked for by --attacks, it is
    refused before the folder is made; in the default set it becomes ISI with the sensitivity indicator."""
    from salmap.cli.defend_flags import attack_specs, fit_attacks

    out = tmp_path / "d"
    args = dae_args(str(own / "pixels.pt"), out)
    args[args.index("fgsm-0.1")] = "isi-l0"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--attacks isi-l0 cannot attack --model" in err
    assert "isi:indicator=sensitivity" in err and not out.exists()

    scripted = torch.jit.load(str(own / "pixels.pt"))
    defaults = attack_specs(None)
    fitted = fit_attacks(defaults, scripted, given=False)
    assert "isi-l0-sensitivity instead of isi-l0" in capsys.readouterr().out
    assert [s.name for s in fitted] == [*(s.name for s in defaults[:-1]), "isi-l0-sensitivity"]
    assert fitted[-1].params == {**defaults[-1].params, "indicator": "sensitivity"}
    assert fit_attacks(defaults, body(), given=False) == defaults  # an eager model keeps the set


def test_isi_relevance_on_a_model_ending_in_log_softmax_is_replaced_or_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    """LRP has no rule for a final log_softmax, found on one test sample before any training: the default
    set attacks with ISI's sensitivity instead (said in one line); asked for, it is refused."""
    from salmap.cli.defend_flags import attack_specs, fit_attacks

    class LogProbabilities(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(self.body(x), dim=1)

    x = torch.rand(1, 1, 8, 8)
    defaults = attack_specs(None)
    fitted = fit_attacks(defaults, LogProbabilities(), given=False, x=x)
    out = capsys.readouterr().out
    assert "isi-l0-sensitivity instead of isi-l0 (LRP has no rule for 'log_softmax'" in out
    assert fitted[-1].params == {**defaults[-1].params, "indicator": "sensitivity"}
    with pytest.raises(ValueError, match="--attacks isi-l0 cannot attack --model: LRP has no rule for 'log_softmax'"):
        fit_attacks(attack_specs(["isi-l0"]), LogProbabilities(), given=True, x=x)
    assert fit_attacks(defaults, body(), given=False, x=x) == defaults
