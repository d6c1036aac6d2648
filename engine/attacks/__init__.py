"""Attacks: small classes, one update rule each, one ``forward(images, labels)``, registered by
name with :func:`register_attack`."""

from __future__ import annotations

from .base import ATTACKS, Attack, AttackState, register_attack
from .mifgsm import MIFGSM
from .pgd import PGD

__all__ = ["ATTACKS", "MIFGSM", "PGD", "Attack", "AttackState", "register_attack"]
