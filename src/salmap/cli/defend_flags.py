"""The flags of ``salmap defend``: those every defense takes, each defense's own, and the
``--attacks`` list the evaluation runs (presets, registered attack names, ``NAME:KEY=VALUE,...``)."""

from __future__ import annotations

import argparse
import difflib

from torch import Tensor, nn

from salmap import registry
from salmap._validate import check_number
from salmap.cli.checks import check_learning_rate
from salmap.cli.common import add_device_arg, add_model_options
from salmap.cli.flags import parse_spec
from salmap.cli.pipeline import add_run_flags
from salmap.defenses.adversarial import MODES
from salmap.defenses.evaluation import AttackSpec, default_attacks


def adv_train_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--mode", choices=list(MODES), default="goodfellow",
                   help="the paper whose training to follow (default goodfellow)")
    q.add_argument("--eps", type=float, default=None,
                   help="Linf radius (default: the mode's published MNIST value, 0.25 goodfellow, 0.3 madry/trades)")
    q.add_argument("--steps", type=int, default=None, help="attack steps (default 40 for madry and trades)")
    q.add_argument("--step", type=float, default=None, help="attack step size (default 0.01 for madry and trades)")
    q.add_argument("--alpha", type=float, default=None, help="goodfellow: weight of the clean loss (default 0.5)")
    q.add_argument("--beta", type=float, default=None, help="trades: weight of the KL term (default 6)")
    q.add_argument("--fine-tune", action="store_true",
                   help="adversarially train a copy of --model's own weights instead of a fresh model of its "
                        "architecture (as ART's AdversarialTrainer does; the only way for a TorchScript file, "
                        "module:factory or .pt2 model)")
    q.add_argument("--eps-warmup", type=float, default=0.0, metavar="EPOCHS",
                   help="grow the radius linearly over this many epochs (default 0, as in the papers; a "
                        "deviation from them for short budgets, see salmap.defenses.adversarial)")


def block_switch_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--channels", type=int, default=5, help="K, parallel channels (default 5, as in the paper)")
    q.add_argument("--split", type=int, default=None,
                   help="layers in a channel (default: the convolutional layers and the first fully connected one)")
    q.add_argument("--upper-epochs", type=int, default=None, help="epochs of round two (default --epochs)")
    q.add_argument("--freeze-channels", action="store_true",
                   help="round two trains the upper part only (the earlier variant)")


def dae_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--width", type=int, default=32, help="autoencoder width (default 32)")
    q.add_argument("--noise-std", type=float, default=0.3, help="Gaussian training noise (default 0.3)")
    q.add_argument("--adversarial", choices=["none", "fgsm", "pgd"], default="fgsm",
                   help="also train on these adversarial examples of the model (default fgsm)")
    q.add_argument("--eps", type=float, default=0.3,
                   help="largest Linf radius of the autoencoder's adversarial examples (default 0.3)")


#: test images ``salmap defend`` evaluates on when ``-n`` is not given
DEFAULT_NUM = 200


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="the trained classifier to defend: checkpoint folder, TorchScript/.pt2 file or module:factory")
    p.add_argument("--data", default="mnist-sample", help="dataset name or kind:PATH (default mnist-sample)")
    p.add_argument("--image-size", type=int, default=None, metavar="N",
                   help="resize images (shorter side to N, centre crop N x N); the whole split is decoded")
    p.add_argument("--out", required=True, help="output folder: the defended checkpoint and evaluation.json")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("-n", "--num", type=int, default=None,
                   help=f"test images to evaluate on (default {DEFAULT_NUM}; more than the split holds: all of them)")
    p.add_argument("--attacks", action="append", default=None, metavar="LIST|NAME:KEY=VALUE,...",
                   help="evaluation attacks: a comma-separated list of the presets "
                        f"{', '.join(s.name for s in default_attacks())} or registered attack names "
                        f"({', '.join(_classifier_attacks())}, with their defaults), or one attack with "
                        "parameters such as pgd:eps=0.1,steps=20; repeatable (default: all presets)")
    p.add_argument("--pgd-steps", type=int, default=40, help="PGD iterations in the evaluation (default 40)")
    p.add_argument("--eot-samples", type=int, default=None,
                   help="EOT passes for randomised models (default: exact expectation over channels)")
    p.add_argument("--no-eval", action="store_true", help="train and save only")
    add_run_flags(p)
    add_device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_model_options(p)


def _classifier_attacks() -> list[str]:
    return [n for n, e in registry.attacks().items() if "classification" in e.tasks]


#: the widest autoencoder and the most block-switching channels built (sizes checked before allocating:
#: a width of 4096 is 436 million weights, each channel a copy of the model's lower part)
MAX_WIDTH, MAX_CHANNELS = 4096, 256
#: numeric flags the training checks again (same limits): ``(flag, low, integer, high)``, checked before the
#: output folder is claimed, so that a wrong value leaves no run behind to refuse the corrected command
_LIMITS = (("epochs", 1, True, None), ("batch_size", 1, True, None), ("lr", 0.0, False, None),
           ("pgd_steps", 1, True, None), ("width", 1, True, MAX_WIDTH), ("noise_std", 0.0, False, None),
           ("channels", 2, True, MAX_CHANNELS), ("upper_epochs", 1, True, None), ("eot_samples", 1, True, None),
           ("eps", 0.0, False, None), ("eps_warmup", 0.0, False, None), ("steps", 1, True, None),
           ("step", 0.0, False, None), ("alpha", 0.0, False, 1.0), ("beta", 0.0, False, None))
#: flags whose value must be above their low limit
_OPEN = ("lr", "step")


def check_flags(args: argparse.Namespace) -> None:
    """``ValueError`` naming the first numeric flag out of its range (``lr`` and ``step`` must be above 0)."""
    for name, low, integer, high in _LIMITS:
        value = getattr(args, name, None)
        if value is not None:
            check_number(f"--{name.replace('_', '-')}", value, low=low, high=high, low_open=name in _OPEN,
                         integer=integer)
    if getattr(args, "lr", None) is not None:
        check_learning_rate("--lr", args.lr)


def attack_specs(values: list[str] | None, pgd_steps: int = 40) -> list[AttackSpec]:
    """The ``--attacks`` values as evaluation specs (presets, registered names, ``NAME:KEY=VALUE,...``)."""
    presets = {s.name: s for s in default_attacks(pgd_steps=pgd_steps)}
    if not values:
        return list(presets.values())
    names = _classifier_attacks()
    specs: list[AttackSpec] = []
    for value in values:
        items = [value] if ":" in value else [v.strip() for v in value.split(",") if v.strip()]
        for item in items:
            name, params = parse_spec(item, "--attacks")
            if name in presets and not params:
                specs.append(presets[name])
                continue
            if name not in names:
                close = difflib.get_close_matches(name, [*presets, *names], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"--attacks must name presets {list(presets)} or classifier attacks {names}, "
                                 f"got {name!r}{hint}")
            entry = registry.get_attack(name)
            label = item if params else name
            specs.append(AttackSpec(label, name, params, targeted=not entry.untargeted or
                                    entry.default_targeting != "none"))
    return specs


def fit_attacks(specs: list[AttackSpec], model: nn.Module, given: bool, x: Tensor | None = None) -> list[AttackSpec]:
    """The ``--attacks`` specs the model can be attacked with, checked before any training.

    An attack whose registry entry checks the model (ISI's LRP relevance needs hooks on layers
    LRP has rules for, and no function it has no rule for in its forward on the sample ``x``,
    such as a final ``log_softmax``) and refuses it: named in one line when ``--attacks`` asked for it
    (``given``); in the default set, ISI's relevance is replaced by its sensitivity indicator,
    which needs only gradients, and the replacement is said in one line.
    """
    fitted = []
    for spec in specs:
        entry = registry.get_attack(spec.attack)
        problem = None
        try:
            entry.check_module(model, dict(spec.params), x)
        except ValueError as err:
            problem = str(err).split(";")[0]
        if problem is None:
            fitted.append(spec)
        elif given:
            raise ValueError(f"--attacks {spec.name} cannot attack --model: {problem}; ask for "
                             f"{spec.attack}:indicator=sensitivity or another attack")
        else:
            params = {**spec.params, "indicator": "sensitivity"}
            swap = AttackSpec(f"{spec.name}-sensitivity", spec.attack, params, spec.targeted)
            print(f"--attacks: {swap.name} instead of {spec.name} ({problem})")
            fitted.append(swap)
    return fitted
