"""engine/checks: a surrogate must give deterministic logits."""

from __future__ import annotations

import pytest
import torch
from toys import TinyNet


def test_surrogate_checks():
    from advx.engine.attacks.checks import ModelCheckError, check_surrogate

    class Probs(TinyNet):
        def forward(self, x):
            return super().forward(x).softmax(-1)

    class Dropout(TinyNet):
        def forward(self, x):
            return super().forward(x) + torch.randn(len(x), 3)

    check_surrogate(TinyNet())
    with pytest.raises(ModelCheckError, match="probabilities"):
        check_surrogate(Probs())
    with pytest.raises(ModelCheckError, match="deterministic"):
        check_surrogate(Dropout())
