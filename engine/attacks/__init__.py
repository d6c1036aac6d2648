"""Attacks: small classes, one update rule each, one ``forward(images, labels)``."""

from __future__ import annotations

from .base import Attack, AttackState
from .mifgsm import MIFGSM
from .pgd import PGD
from .pgdl2 import PGDL2
from .svre import SVRE

ATTACK_CLASSES: dict[str, type[Attack]] = {"pgd": PGD, "pgd-l2": PGDL2, "mifgsm": MIFGSM,
                                       "svre": SVRE}

__all__ = ["ATTACK_CLASSES", "MIFGSM", "PGD", "PGDL2", "SVRE", "Attack", "AttackState"]
