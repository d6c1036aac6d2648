"""What a text solver can read: its charset, the truth as indices, and its case rule. A
case-insensitive solver's symbols fall into *groups* (``a`` and ``A``), and the truth is
encoded as groups, so an attack cannot count a change of case as a win.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .text_spec import CTCHead


class CharsetError(ValueError):
    """A truth text the solver cannot read (empty, or characters outside its charset)."""


@dataclass(frozen=True)
class Charset:
    """A CTC head's symbols, blank, case rule and the classes its decoder never emits."""

    symbols: tuple[str, ...]  # one per class (the blank's is never read)
    blank: int
    case: str = "insensitive"  # "insensitive" | "sensitive"
    never_emit: tuple[int, ...] = ()
    solver: str = "solver"  # named in errors
    group_of: tuple[int, ...] = field(init=False, repr=False)  # class -> group
    groups: int = field(init=False, repr=False)  # number of groups
    blank_group: int = field(init=False, repr=False)
    _lookup: dict[str, int] = field(init=False, repr=False, compare=False)  # key -> group
    _longest: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        groups: dict[str, int] = {}
        group_of, lookup = [], {}
        for i, symbol in enumerate(self.symbols):
            readable = i != self.blank and i not in self.never_emit
            key = self.key(symbol) if readable else f"\0{i}"  # unreadable: a group alone
            group_of.append(groups.setdefault(key, len(groups)))
            if readable:
                lookup[key] = group_of[-1]
        object.__setattr__(self, "group_of", tuple(group_of))
        object.__setattr__(self, "groups", len(groups))
        object.__setattr__(self, "blank_group", group_of[self.blank])
        object.__setattr__(self, "_lookup", lookup)
        object.__setattr__(self, "_longest", max((len(k) for k in lookup), default=1))

    @classmethod
    def of(cls, head: CTCHead, solver: str = "solver") -> Charset:
        return cls(head.charset, head.blank, head.case, head.never_emit, solver)

    def key(self, text: str) -> str:
        """``text`` as the solver's case rule compares it."""
        return text.lower() if self.case == "insensitive" else text

    def same(self, read: str, truth: str) -> bool:
        """Whether a reading counts as the truth under the case rule."""
        return self.key(read) == self.key(truth)

    def decode(self, indices: Sequence[int]) -> str:
        """Class indices (a greedy CTC reading) -> the string."""
        return "".join(self.symbols[i] for i in indices)

    def encode(self, text: str) -> list[int]:
        """The truth as group indices (longest symbol first where symbols span characters).

        Raises CharsetError for an empty text or characters the solver never reads."""
        if not isinstance(text, str) or not text:
            raise CharsetError(f"{self.solver}: the truth text is empty ({text!r}); each "
                               f"captcha needs the text it shows")
        key, out, missing, i = self.key(text), [], [], 0
        while i < len(key):
            for n in range(min(self._longest, len(key) - i), 0, -1):
                group = self._lookup.get(key[i : i + n])
                if group is not None:
                    out.append(group)
                    i += n
                    break
            else:
                missing.append(text[i])
                i += 1
        if missing:
            chars = "".join(dict.fromkeys(missing))
            never = [self.symbols[c] for c in self.never_emit if self.key(self.symbols[c])
                     in {self.key(m) for m in missing}]
            why = (f" (its decoder never emits {''.join(never)!r})" if never else "")
            raise CharsetError(f"{self.solver} cannot read {chars!r} in {text!r}: not in its "
                               f"charset of {len(self._lookup)} symbols{why}")
        return out


def truth_problem(text: object, charsets: Iterable[Charset]) -> str | None:
    """Why ``text`` cannot be a captcha's truth for solvers of these charsets (None: it can):
    empty, spaces around it, or characters one of them never reads (named with the solver)."""
    if not isinstance(text, str) or not text.strip():
        return f"the truth text is empty ({text!r}); each captcha needs the text it shows"
    if text != text.strip():
        return f"the truth text {text!r} has leading or trailing spaces"
    for cs in charsets:
        try:
            cs.encode(text)
        except CharsetError as e:
            return str(e)
    return None


__all__ = ["Charset", "CharsetError", "truth_problem"]
