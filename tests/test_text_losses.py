"""Losses for text CAPTCHAs, against brute force and hand-computed values: the CTC loss on the
truth (every alignment enumerated), the margin on the best alignment, case folding, charset
errors, greedy decoding invariants, the edit distance."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from advx.engine.tasks.text.losses import (
    best_alignment,
    ctc_loss,
    ctc_margin,
    edit_distance,
    text_targets,
    unreadable,
)
from advx.export.solver.charset import Charset, CharsetError
from advx.export.solver.ctc import greedy_ctc

SYMBOLS = ("-", "a", "b", "A")  # blank first; "a" / "A" one symbol up to case


def _charset(case: str = "insensitive", **kw) -> Charset:
    return Charset(SYMBOLS, 0, case, solver="tiny", **kw)


def fold_log_probs(logits: torch.Tensor, targets) -> torch.Tensor:
    """[N, T, C] logits -> [N, T, G] log-probabilities of the case-folded groups (the reference
    the CTC loss's own fold is held to)."""
    lp = logits.float().log_softmax(-1)
    if targets.n_groups == lp.shape[-1]:
        return lp
    m = lp.amax(-1, keepdim=True).detach()
    p = torch.zeros(*lp.shape[:2], targets.n_groups, dtype=lp.dtype, device=lp.device)
    p = p.index_add(-1, targets.group_of.to(lp.device), (lp - m).exp())
    return p.clamp_min(1e-38).log() + m


def _collapse(path: tuple[int, ...], blank: int) -> tuple[int, ...]:
    out, prev = [], None
    for c in path:
        if c != prev and c != blank:
            out.append(c)
        prev = c
    return tuple(out)


def _brute_force_nll(logits: torch.Tensor, truth: tuple[int, ...], group_of, blank: int) -> float:
    """-log of the summed probability of every path whose reading, up to case, is the truth."""
    lp = logits.log_softmax(-1)
    t, c = lp.shape
    total = []
    for path in itertools.product(range(c), repeat=t):
        groups = tuple(group_of[k] for k in path)
        if _collapse(groups, group_of[blank]) == truth:
            total.append(sum(float(lp[i, k]) for i, k in enumerate(path)))
    return -math.log(sum(math.exp(v) for v in total))


# --- the charset: encoding the truth -------------------------------------------------------------


def test_case_rule_groups_symbols():
    insensitive, sensitive = _charset(), _charset("sensitive")
    assert insensitive.groups == 3 and insensitive.group_of == (0, 1, 2, 1)
    assert insensitive.encode("aBA") == insensitive.encode("AbA") == [1, 2, 1]
    assert sensitive.groups == 4 and sensitive.encode("aA") == [1, 3]
    assert insensitive.same("ab", "AB") and not sensitive.same("ab", "AB")
    assert insensitive.decode([3, 2]) == "Ab"


def test_charset_errors_name_the_solver_and_the_characters():
    cs = _charset()
    with pytest.raises(CharsetError, match=r"tiny cannot read 'xz' in 'axbz'"):
        cs.encode("axbz")
    with pytest.raises(CharsetError, match="tiny: the truth text is empty"):
        cs.encode("")
    never = Charset(("0", "1", "2", "_"), 3, never_emit=(0,), solver="whisperer")
    assert never.encode("12") == [1, 2]
    with pytest.raises(CharsetError, match="its decoder never emits '0'"):
        never.encode("102")
    with pytest.raises(CharsetError, match="'B'"):
        _charset("sensitive").encode("aB")  # no upper-case B for a case-sensitive solver


def test_multi_character_symbols_match_longest_first():
    cs = Charset(("", "'", "''", "x"), 0)  # ddddocr's beta charset holds "''"
    assert cs.encode("x'''x") == [3, 2, 1, 3]
    assert cs.decode([3, 2, 1, 3]) == "x'''x"


def test_targets_pad_and_count_the_steps_repeats_need():
    t = text_targets(_charset(), ["aa", "bab", "a"])
    assert t.groups.tolist() == [[1, 1, 0], [2, 1, 2], [1, 0, 0]]
    assert t.lengths.tolist() == [2, 3, 1]
    assert unreadable(t, 2).tolist() == [True, True, False] and not unreadable(t, 3).any()
    with pytest.raises(CharsetError, match="no truth texts"):
        text_targets(_charset(), [])


# --- greedy decoding invariants ------------------------------------------------------------------


def test_greedy_reading_collapses_repeats_and_drops_blanks():
    g = torch.Generator().manual_seed(0)
    cs = _charset()
    for _ in range(50):
        logits = torch.randn(1, 7, 4, generator=g) * 3
        (row,) = greedy_ctc(logits, 0)
        assert 0 not in row
        path = tuple(logits[0].argmax(-1).tolist())
        assert tuple(row) == _collapse(path, 0)
        assert cs.decode(row) == "".join(SYMBOLS[c] for c in _collapse(path, 0))
        # a blank between equal symbols keeps both; without one they merge
        assert greedy_ctc(torch.eye(4)[[1, 0, 1]][None] * 5, 0) == [[1, 1]]
        assert greedy_ctc(torch.eye(4)[[1, 1, 1]][None] * 5, 0) == [[1]]


# --- the CTC loss --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["sensitive", "insensitive"])
def test_ctc_loss_is_the_brute_force_probability(case):
    cs = _charset(case)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 4, generator=g) * 2
    texts = ["ab", "aA", "b"] if case == "sensitive" else ["ab", "aa", "B"]
    targets = text_targets(cs, texts)
    loss = ctc_loss(logits, targets)
    assert loss.shape == (3,)
    for i, text in enumerate(texts):
        want = _brute_force_nll(logits[i], tuple(cs.encode(text)), cs.group_of, 0)
        assert float(loss[i]) == pytest.approx(want, rel=1e-4)


def test_ctc_loss_per_row_with_gradients():
    cs = _charset()
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(4, 6, 4, generator=g) * 2).requires_grad_(True)
    targets = text_targets(cs, ["ab", "ba", "aab", "b"])
    loss = ctc_loss(logits, targets)
    alone = torch.cat([ctc_loss(logits[i : i + 1], text_targets(cs, [t]))
                       for i, t in enumerate(targets.texts)])
    torch.testing.assert_close(loss, alone)
    loss[1].backward()
    assert logits.grad[1].abs().sum() > 0 and logits.grad[[0, 2, 3]].abs().sum() == 0
    # reading the truth lowers the loss: the truth's symbols up-weighted on their steps
    read = torch.full((1, 6, 4), -5.0)
    read[0, [0, 1], 1], read[0, 2:4, 0], read[0, 4:, 2] = 5.0, 5.0, 5.0  # "a a - - b b"
    assert float(ctc_loss(read, text_targets(cs, ["ab"]))) < 0.01
    assert float(ctc_loss(read, text_targets(cs, ["ba"]))) > 10


def test_case_folding_sums_case_variants():
    cs = _charset()
    logits = torch.tensor([[[0.0, 1.0, -1.0, 2.0]]])
    lp = fold_log_probs(logits, text_targets(cs, ["a"]))
    p = logits.softmax(-1)[0, 0]
    torch.testing.assert_close(lp[0, 0].exp(), torch.stack([p[0], p[1] + p[3], p[2]]))
    # a case-insensitive solver reading "A" for "a" is not fooled: the loss stays low
    upper = torch.full((1, 3, 4), -5.0)
    upper[0, :, 3] = 5.0
    assert float(ctc_loss(upper, text_targets(cs, ["a"]))) < 0.01
    assert float(ctc_loss(upper, text_targets(_charset("sensitive"), ["a"]))) > 10


@pytest.mark.parametrize("case", ["insensitive", "sensitive"])
def test_ctc_loss_reads_only_the_columns_it_needs_and_equals_the_full_fold(case):
    # a charset with case pairs and characters no truth uses: the loss and its gradient are
    # those of CTC over every folded group
    symbols = ("-", "a", "b", "A", "B", "c", "d", "x", "y", "z")
    cs = Charset(symbols, 0, case, solver="wide")
    every = ["abABcdxyz"[:9] if case == "sensitive" else "abcdxyz"]  # no class left over
    for truths in (["ab", "bA", "aab", "c"], ["c", "c", "a", "b"], every * 2):
        t = text_targets(cs, truths)
        z = torch.randn(len(truths), 12, len(symbols),
                        generator=torch.Generator().manual_seed(3), requires_grad=True)
        loss = ctc_loss(z, t)
        (g,) = torch.autograd.grad(loss.sum(), z)
        lp = fold_log_probs(z, t)
        ref = torch.nn.functional.ctc_loss(
            lp.transpose(0, 1), t.groups, torch.full((len(truths),), 12), t.lengths,
            blank=t.blank, reduction="none")
        (g_ref,) = torch.autograd.grad(ref.sum(), z)
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(g, g_ref)
        assert bool(torch.isfinite(g).all())


def test_truth_longer_than_the_head_is_unreadable_not_an_error():
    # "aab" needs 4 steps (a blank between the a's): a 3-step head can never read it, so its
    # loss is the cap with no gradient and its margin is kappa; the row beside it is untouched
    cs = _charset()
    t = text_targets(cs, ["aab", "ab"])
    assert unreadable(t, 3).tolist() == [True, False]
    z = torch.randn(2, 3, 4, requires_grad=True)
    loss = ctc_loss(z, t, cap=10.0)
    assert float(loss[0]) == 10.0
    torch.testing.assert_close(loss[1], ctc_loss(z[1:], t.take([1]), cap=10.0)[0])
    loss.sum().backward()
    assert float(z.grad[0].abs().sum()) == 0.0 and float(z.grad[1].abs().sum()) > 0
    assert float(ctc_loss(z.detach()[:1], t.take([0]))) == float("inf")
    m = ctc_margin(z.detach(), t, kappa=50.0)
    assert float(m[0]) == 50.0
    torch.testing.assert_close(m[1], ctc_margin(z.detach()[1:], t.take([1]))[0])
    with pytest.raises(ValueError, match="classes"):
        ctc_loss(torch.zeros(1, 3, 5), text_targets(cs, ["a"]))


# --- the margin on the best alignment ------------------------------------------------------------


def _reading(path: list[int], classes: int = 4, high: float = 4.0) -> torch.Tensor:
    """[1, T, C] logits whose best class at step t is path[t] (by ``high``)."""
    z = torch.zeros(1, len(path), classes)
    z[0, torch.arange(len(path)), torch.tensor(path)] = high
    return z


def test_best_alignment_is_the_greedy_path_when_it_reads_the_truth():
    cs = _charset("sensitive")
    g = torch.Generator().manual_seed(3)
    seen = 0
    for _ in range(200):
        logits = torch.randn(1, 6, 4, generator=g) * 3
        (row,) = greedy_ctc(logits, 0)
        if not row:
            continue
        seen += 1
        targets = text_targets(cs, [cs.decode(row)])
        path = best_alignment(logits, targets)[0]
        states = [0 if s % 2 == 0 else targets.groups[0, s // 2].item() for s in path.tolist()]
        assert states == logits[0].argmax(-1).tolist()
        assert float(ctc_margin(logits, targets)) <= 0
    assert seen > 100


def test_margin_values_by_hand():
    cs = _charset("sensitive")
    # "a a - b": reads "ab"; every step decided by 4
    z = _reading([1, 1, 0, 2])
    targets = text_targets(cs, ["ab"])
    assert float(ctc_margin(z, targets)) == pytest.approx(-4.0)
    # the second "a" step nearly taken: "a" is still emitted by the first, so no change
    z2 = z.clone()
    z2[0, 1, 2] = 3.5
    assert float(ctc_margin(z2, targets)) == pytest.approx(-4.0)
    # "b"'s only step taken by "A" (by 1): the reading loses its "b"
    z3 = z.clone()
    z3[0, 3, 3] = 5.0
    assert float(ctc_margin(z3, targets)) == pytest.approx(1.0)
    assert greedy_ctc(z3, 0) == [[1, 3]]  # read "aA": fooled
    # an insertion: the blank step taken by "A" (not a neighbour, so it does not merge)
    z4 = z.clone()
    z4[0, 2, 3] = 4.5
    assert float(ctc_margin(z4, targets)) == pytest.approx(0.5)
    # taken by "a", the neighbour on its left, it merges: no insertion
    z5 = z.clone()
    z5[0, 2, 1] = 4.5
    assert float(ctc_margin(z5, targets)) == pytest.approx(-4.0)


def test_margin_counts_case_variants_as_the_truth():
    z = _reading([1, 0, 2])
    z[0, 0, 3] = 6.0  # "A" beats "a" at the first step
    insensitive = ctc_margin(z, text_targets(_charset(), ["ab"]))
    sensitive = ctc_margin(z, text_targets(_charset("sensitive"), ["ab"]))
    assert float(insensitive) < 0 < float(sensitive)


def test_margin_is_capped_and_has_gradients():
    cs = _charset("sensitive")
    z = _reading([1, 0, 2], high=100.0)
    z[0, 2, 3] = 200.0
    assert float(ctc_margin(z, text_targets(cs, ["ab"]), kappa=50.0)) == 50.0
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(3, 7, 4, generator=g) * 2).requires_grad_(True)
    m = ctc_margin(logits, text_targets(cs, ["ab", "ba", "a"]))
    assert m.shape == (3,)
    m.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# --- edit distance --------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "d"), [
    ("", "", 0), ("abc", "abc", 0), ("abc", "abd", 1), ("abc", "ab", 1), ("ab", "abc", 1),
    ("kitten", "sitting", 3), ("", "abcd", 4), ("abcd", "", 4), ("ab", "ba", 2),
])
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)
