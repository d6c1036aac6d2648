"""Losses for text CAPTCHAs: pure functions of a CTC head's per-step logits.

An OCR solver reads the best symbol per time step, repeats merged, blanks dropped (greedy
CTC). The attack maximises :func:`ctc_loss` (-log P(the truth), on log-probabilities folded by
the solver's case rule) or :func:`ctc_margin` (a margin on the truth's best alignment). A
verdict is on strings: a solver is fooled when its reading differs from the truth under its
case rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ....export.solver.charset import Charset, CharsetError


@dataclass(frozen=True)
class TextTargets:
    """The truth of each row, encoded for one solver: group indices (see
    :class:`~advx.export.solver.charset.Charset`), padded."""

    groups: torch.Tensor  # [N, L] long, padded with 0 past each row's length
    lengths: torch.Tensor  # [N] long
    group_of: torch.Tensor  # [C] long: the group of each class of the head
    n_groups: int
    blank: int  # the blank's group
    texts: tuple[str, ...]
    solver: str

    def take(self, rows: torch.Tensor | Sequence[int]) -> TextTargets:
        """The truths of ``rows`` (indices into this table)."""
        idx = torch.as_tensor(rows, dtype=torch.long).cpu()
        return TextTargets(self.groups[idx], self.lengths[idx], self.group_of, self.n_groups,
                           self.blank, tuple(self.texts[i] for i in idx.tolist()), self.solver)


def text_targets(charset: Charset, texts: Sequence[str]) -> TextTargets:
    """Encode the truths for ``charset``'s solver; raises CharsetError (naming the solver and
    the characters) for an empty truth or characters it cannot read."""
    if not texts:
        raise CharsetError(f"{charset.solver}: no truth texts")
    rows = [charset.encode(t) for t in texts]
    width = max(len(r) for r in rows)
    groups = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        groups[i, : len(r)] = torch.tensor(r)
    return TextTargets(groups, torch.tensor([len(r) for r in rows]),
                       torch.tensor(charset.group_of), charset.groups, charset.blank_group,
                       tuple(texts), charset.solver)


def _check(logits: torch.Tensor, targets: TextTargets) -> None:
    if logits.ndim != 3 or logits.shape[0] != len(targets.texts):
        raise ValueError(f"expected logits [N, T, C] for {len(targets.texts)} truths, got "
                         f"{list(logits.shape)}")
    if logits.shape[-1] != len(targets.group_of):
        raise ValueError(f"logits have {logits.shape[-1]} classes, {targets.solver}'s charset "
                         f"{len(targets.group_of)}")


def unreadable(targets: TextTargets, steps: int) -> torch.Tensor:
    """[N] bool: truths a head of ``steps`` time steps cannot emit at all (they need more
    steps, one blank between repeats): the solver misreads them whatever the pixels."""
    g, n = targets.groups, targets.lengths
    same = (g[:, 1:] == g[:, :-1]) & (torch.arange(1, g.shape[1]) < n[:, None])
    return n + same.sum(1) > steps


def fold_logits(logits: torch.Tensor, targets: TextTargets) -> torch.Tensor:
    """[N, T, C] -> [N, T, G]: each group's best class logit (a greedy reading picks the group
    of the best class)."""
    z = logits.float()
    if targets.n_groups == z.shape[-1]:
        return z
    index = targets.group_of.to(z.device).expand_as(z)
    out = torch.full((*z.shape[:2], targets.n_groups), float("-inf"), dtype=z.dtype,
                     device=z.device)
    return out.scatter_reduce(-1, index, z, reduce="amax", include_self=True)


def ctc_loss(logits: torch.Tensor, targets: TextTargets, cap: float | None = None
             ) -> torch.Tensor:
    """-log P(the solver reads the truth) [N] of per-step ``logits`` [N, T, C], to maximise;
    past ``cap`` nats it stops rising, leaving the step to the other members of an ensemble.
    An unreadable truth has ``cap`` (inf without one), with no gradient."""
    _check(logits, targets)
    lp, groups, blank = _truth_log_probs(logits, targets)
    n, t = lp.shape[:2]
    steps = torch.full((n,), t, dtype=torch.long, device=lp.device)
    loss = F.ctc_loss(lp.transpose(0, 1), groups.to(lp.device), steps,
                      targets.lengths.to(lp.device),
                      blank=blank, reduction="none", zero_infinity=True)
    gone = unreadable(targets, t).to(lp.device)
    loss = torch.where(gone, torch.full_like(loss, math.inf if cap is None else cap), loss)
    return loss if cap is None else loss.clamp(max=cap)


def _truth_log_probs(logits: torch.Tensor, targets: TextTargets
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The case-folded log-probabilities of the groups CTC reads (the blank's and the truths',
    K of them) plus one for all the others [N, T, K + 1] (summing to 1, as ``F.ctc_loss``
    assumes), the truths re-indexed into them, and the blank's index."""
    g, present = targets.groups, torch.arange(targets.groups.shape[1]) < targets.lengths[:, None]
    used = torch.unique(torch.cat([g[present], torch.tensor([targets.blank])]))
    index = torch.full((targets.n_groups,), -1, dtype=torch.long)
    index[used] = torch.arange(len(used))
    cls = (index[targets.group_of] >= 0).nonzero().flatten()  # the classes of those groups
    lp = logits.float().log_softmax(-1)
    sel = lp[..., cls.to(lp.device)]
    dest = index[targets.group_of[cls]].to(lp.device)
    if len(cls) == len(used):  # one class per group: a reordering
        out = sel[..., torch.argsort(dest)]
    else:
        m = sel.amax(-1, keepdim=True).detach()
        p = torch.zeros(*lp.shape[:2], len(used), dtype=lp.dtype, device=lp.device)
        out = p.index_add(-1, dest, (sel - m).exp()).clamp_min(1e-38).log() + m
    others = torch.ones(lp.shape[-1], dtype=torch.bool)
    others[cls] = False
    if bool(others.any()):
        rest = lp.masked_fill(~others.to(lp.device), float("-inf")).logsumexp(-1, keepdim=True)
        out = torch.cat([out, rest], -1)
    return out, torch.where(present, index[g], 0), int(index[targets.blank])


def _extended(targets: TextTargets) -> tuple[torch.Tensor, torch.Tensor]:
    """The CTC state sequence per row: blank, y1, blank, ..., yL, blank ([N, 2L + 1]) and
    which states exist for the row's length."""
    g, n = targets.groups, targets.lengths
    states = torch.full((g.shape[0], 2 * g.shape[1] + 1), targets.blank, dtype=torch.long)
    states[:, 1::2] = g
    valid = torch.arange(states.shape[1]) < (2 * n + 1)[:, None]
    return states, valid


def best_alignment(scores: torch.Tensor, targets: TextTargets) -> torch.Tensor:
    """[N, T] the state (index into the blank-interleaved truth) of each step on the best
    path that reads the truth (Viterbi over per-step ``scores`` [N, T, G])."""
    states, valid = _extended(targets)
    states, valid = states.to(scores.device), valid.to(scores.device)
    n, t, _ = scores.shape
    s = states.shape[1]
    emit = scores.gather(2, states[:, None, :].expand(n, t, s))  # [N, T, S]
    neg = torch.tensor(float("-inf"), device=scores.device)
    # a state may be entered from itself, the one before, or two before (a symbol after a
    # different symbol, skipping the blank between)
    skip = torch.zeros_like(valid)
    skip[:, 2:] = (states[:, 2:] != targets.blank) & (states[:, 2:] != states[:, :-2])
    alpha = torch.full((n, s), float("-inf"), device=scores.device)
    alpha[:, 0] = emit[:, 0, 0]
    alpha[:, 1] = torch.where(valid[:, 1], emit[:, 0, 1], neg)
    back = torch.zeros(n, t, s, dtype=torch.long, device=scores.device)
    idx = torch.arange(s, device=scores.device)
    for step in range(1, t):
        stay = alpha
        one = F.pad(alpha, (1, 0), value=float("-inf"))[:, :s]
        two = torch.where(skip, F.pad(alpha, (2, 0), value=float("-inf"))[:, :s], neg)
        cand = torch.stack([stay, one, two], -1)
        best, arg = cand.max(-1)
        back[:, step] = idx - arg
        alpha = torch.where(valid, best + emit[:, step], neg)
    last = 2 * targets.lengths.to(scores.device)  # the final blank, or the last symbol
    end = torch.stack([alpha.gather(1, last[:, None])[:, 0],
                       alpha.gather(1, (last - 1)[:, None])[:, 0]], 1)
    state = torch.where(end[:, 0] >= end[:, 1], last, last - 1)
    path = torch.zeros(n, t, dtype=torch.long, device=scores.device)
    for step in range(t - 1, -1, -1):
        path[:, step] = state
        state = back[:, step].gather(1, state[:, None])[:, 0]
    return path


def ctc_margin(logits: torch.Tensor, targets: TextTargets, kappa: float = 50.0) -> torch.Tensor:
    """Margin loss on the truth's best alignment [N], to maximise (capped at ``kappa``): the
    largest of, per true character, the smallest gap (best other logit - the path's) over the
    steps that emit it, and per blank step, the gap of the symbols that would insert one; below
    0 while the solver reads the truth. An unreadable truth has ``kappa``."""
    _check(logits, targets)
    gone = unreadable(targets, logits.shape[1])
    if bool(gone.any()):
        out = torch.full((len(gone),), kappa, device=logits.device)
        keep = (~gone).nonzero().flatten()
        if len(keep):
            out[keep.to(logits.device)] = ctc_margin(logits[keep.to(logits.device)],
                                                     targets.take(keep), kappa)
        return out
    z = fold_logits(logits, targets)  # [N, T, G]
    n, t, g = z.shape
    with torch.no_grad():
        path = best_alignment(z, targets)  # [N, T] state indices
    states, _ = _extended(targets)
    states = states.to(z.device)
    label = states.gather(1, path)  # [N, T] group on the path
    own = z.gather(2, label[..., None])[..., 0]
    blank = targets.blank
    is_blank = label == blank
    # the symbols that change nothing at a blank step: the blank, and the characters of the
    # neighbouring steps (they merge into them), unless both neighbours are the same symbol
    prev = F.pad(label, (1, 0), value=blank)[:, :t]
    nxt = F.pad(label, (0, 1), value=blank)[:, 1:]
    both = (prev == nxt) & (prev != blank)
    excluded = F.one_hot(label, g).bool()
    merge = F.one_hot(prev, g).bool() | F.one_hot(nxt, g).bool()
    excluded |= is_blank[..., None] & merge & ~both[..., None]
    excluded[..., blank] |= is_blank
    other = z.masked_fill(excluded, float("-inf")).amax(-1)
    gap = other - own  # [N, T] (-inf where no symbol is left to take the step)
    char = torch.where(is_blank, -1, (path - 1) // 2)  # [N, T] which true character
    n_chars = targets.groups.shape[1]
    per_char = torch.full((n, n_chars + 1), float("inf"), device=z.device)
    per_char = per_char.scatter_reduce(1, (char + 1).clamp_min(0), gap, reduce="amin",
                                       include_self=True)[:, 1:]
    present = torch.arange(n_chars, device=z.device) < targets.lengths.to(z.device)[:, None]
    per_char = per_char.masked_fill(~present, float("-inf"))
    insert = gap.masked_fill(~is_blank, float("-inf")).amax(1)
    return torch.maximum(per_char.amax(1), insert).clamp(max=kappa)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of one character)."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


__all__ = ["TextTargets", "best_alignment", "ctc_loss", "ctc_margin", "edit_distance",
           "fold_logits", "text_targets", "unreadable"]
