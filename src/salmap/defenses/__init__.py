"""Defenses: denoising-autoencoder purification, block switching (alone or behind the denoiser),
adversarial training (Goodfellow, Madry, TRADES),
the adaptive attacks that test them (EOT, BPDA) and their honest evaluation."""

from salmap.defenses.adaptive import (
    BPDA,
    EOT,
    DefenseWarning,
    PurifiedChannels,
    adaptive_model,
    is_randomized,
)
from salmap.defenses.adversarial import MODES, PUBLISHED, adversarial_hook, adversarial_training
from salmap.defenses.block_switch import BlockSwitch, train_block_switch
from salmap.defenses.combined import dae_block_switch, train_dae_block_switch
from salmap.defenses.denoiser import (
    DenoisingAutoencoder,
    Purified,
    reconstruction_error,
    train_denoiser,
)
from salmap.defenses.evaluation import (
    check_trained,
    default_attacks,
    evaluate_defense,
)

__all__ = [
    "BPDA",
    "EOT",
    "BlockSwitch",
    "DefenseWarning",
    "DenoisingAutoencoder",
    "MODES",
    "PUBLISHED",
    "Purified",
    "PurifiedChannels",
    "adaptive_model",
    "adversarial_hook",
    "adversarial_training",
    "check_trained",
    "dae_block_switch",
    "default_attacks",
    "evaluate_defense",
    "is_randomized",
    "reconstruction_error",
    "train_block_switch",
    "train_dae_block_switch",
    "train_denoiser",
]
