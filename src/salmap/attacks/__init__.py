"""Adversarial attacks. Each is configured once and called on batches."""

from salmap.attacks.base import Attack, AttackResult, all_other_targets, random_targets
from salmap.attacks.bim import BIM
from salmap.attacks.fgsm import FGSM
from salmap.attacks.isi import ISI
from salmap.attacks.jsma import JSMA, select_features
from salmap.attacks.jsma_seg import SegmentationJSMA
from salmap.attacks.pgd import PGD

__all__ = ["Attack", "AttackResult", "BIM", "FGSM", "ISI", "JSMA", "PGD", "SegmentationJSMA", "all_other_targets", "random_targets", "select_features"]
