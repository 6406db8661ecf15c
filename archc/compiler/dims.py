"""Symbolic tensor dimensions.

A dimension is an `int` or a `Sym`: a polynomial with integer coefficients over
named symbols (`B`, `T`) and opaque atoms (`(H + 1) // 2`). Arithmetic on
symbols stays exact where it can (`T * 2 // 2 == T`); where it cannot, the
result is an opaque atom that still compares equal to the same expression.
Comparisons that depend on a symbol's value raise `NotStatic`.
"""
from __future__ import annotations

from typing import Union

Monomial = tuple[str, ...]  # sorted atom names, repeated for powers


class NotStatic(Exception):
    """A decision needed the value of a symbolic dimension."""


class Sym:
    __slots__ = ("terms", "_hash")

    def __init__(self, terms: dict[Monomial, int]):
        self.terms: tuple[tuple[Monomial, int], ...] = tuple(
            sorted((m, c) for m, c in terms.items() if c != 0)
        )
        self._hash = hash(self.terms)

    @staticmethod
    def symbol(name: str) -> "Sym":
        return Sym({(name,): 1})

    # -- conversion -------------------------------------------------------
    def _dict(self) -> dict[Monomial, int]:
        return dict(self.terms)

    @property
    def constant(self) -> int:
        return dict(self.terms).get((), 0)

    def symbols(self) -> set[str]:
        return {a for m, _ in self.terms for a in m}

    def subs(self, values: dict[str, int]) -> "Dim":
        """Substitute integer values for symbols (atoms are re-evaluated)."""
        total: Dim = 0
        for mono, coeff in self.terms:
            term: Dim = coeff
            for atom in mono:
                term = term * _subs_atom(atom, values)
            total = total + term
        return total

    # -- arithmetic -------------------------------------------------------
    def __add__(self, other) -> "Dim":
        other = _as_sym(other)
        if other is None:
            return NotImplemented
        d = self._dict()
        for m, c in other.terms:
            d[m] = d.get(m, 0) + c
        return _norm(d)

    __radd__ = __add__

    def __neg__(self) -> "Dim":
        return _norm({m: -c for m, c in self.terms})

    def __sub__(self, other) -> "Dim":
        other = _as_sym(other)
        if other is None:
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other) -> "Dim":
        return (-self) + other

    def __mul__(self, other) -> "Dim":
        other = _as_sym(other)
        if other is None:
            return NotImplemented
        d: dict[Monomial, int] = {}
        for m1, c1 in self.terms:
            for m2, c2 in other.terms:
                m = tuple(sorted(m1 + m2))
                d[m] = d.get(m, 0) + c1 * c2
        return _norm(d)

    __rmul__ = __mul__

    def __pow__(self, other) -> "Dim":
        if not isinstance(other, int) or isinstance(other, bool) or other < 0:
            return NotImplemented
        out: Dim = 1
        for _ in range(other):
            out = out * self
        return out

    def __floordiv__(self, other) -> "Dim":
        if isinstance(other, int) and not isinstance(other, bool):
            if other == 0:
                raise ZeroDivisionError("division by zero")
            if all(c % other == 0 for _, c in self.terms):
                return _norm({m: c // other for m, c in self.terms})
            return _atom(f"({self}) // {other}")
        if isinstance(other, Sym):
            if other == self:
                return 1
            return _atom(f"({self}) // ({other})")
        return NotImplemented

    def __rfloordiv__(self, other) -> "Dim":
        if isinstance(other, int):
            return _atom(f"{other} // ({self})")
        return NotImplemented

    def __mod__(self, other) -> "Dim":
        if isinstance(other, int) and not isinstance(other, bool):
            if other == 0:
                raise ZeroDivisionError("modulo by zero")
            if all(c % other == 0 for _, c in self.terms):
                return 0
            return _atom(f"({self}) % {other}")
        return _atom(f"({self}) % ({other})")

    def __rmod__(self, other) -> "Dim":
        return _atom(f"{other} % ({self})")

    def __truediv__(self, other) -> "Dim":
        # Dimensions are integers: exact division only.
        result = self // other
        if isinstance(other, int) and not isinstance(other, bool) and result * other != self:
            raise NotStatic(f"{self} / {other} is not known to be a whole number")
        return result

    # -- comparison ---------------------------------------------------------
    def __eq__(self, other) -> bool:
        other_sym = _as_sym(other)
        if other_sym is None:
            return NotImplemented
        return self.terms == other_sym.terms

    def __hash__(self) -> int:
        return self._hash

    def _cmp(self, other, op: str) -> bool:
        diff = self - other
        if isinstance(diff, int):
            return {"<": diff < 0, "<=": diff <= 0, ">": diff > 0, ">=": diff >= 0}[op]
        raise NotStatic(f"`{self} {op} {other}` depends on the value of {', '.join(sorted(self.symbols()))}")

    def __lt__(self, other):
        return self._cmp(other, "<")

    def __le__(self, other):
        return self._cmp(other, "<=")

    def __gt__(self, other):
        return self._cmp(other, ">")

    def __ge__(self, other):
        return self._cmp(other, ">=")

    def __bool__(self) -> bool:
        raise NotStatic(f"the truth of `{self}` depends on a symbol's value")

    def __index__(self) -> int:
        raise NotStatic(f"`{self}` is not a known integer")

    # -- printing -----------------------------------------------------------
    def __str__(self) -> str:
        parts: list[str] = []
        # highest degree first, constant last: `2 * T + 1`
        for mono, coeff in sorted(self.terms, key=lambda t: (-len(t[0]), t[0])):
            # An opaque atom (`(T + 1) // 2`) stands bare only where nothing could regroup it.
            bare = len(mono) == 1 and abs(coeff) == 1 and (coeff > 0 or parts)
            body = " * ".join(_group(mono, bare))
            if not mono:
                text = str(abs(coeff))
            elif abs(coeff) == 1:
                text = body
            else:
                text = f"{abs(coeff)} * {body}"
            if not parts:
                parts.append(text if coeff > 0 else f"-{text}")
            else:
                parts.append(("+ " if coeff > 0 else "- ") + text)
        return " ".join(parts) if parts else "0"

    __repr__ = __str__


Dim = Union[int, Sym]


def _group(mono: Monomial, bare: bool = False) -> list[str]:
    out: list[str] = []
    for atom in sorted(set(mono)):
        n = mono.count(atom)
        name = atom if _is_name(atom) or bare else f"({atom})"
        out.append(name if n == 1 else f"{name} ** {n}")
    return out


def _is_name(s: str) -> bool:
    return s.isidentifier()


def _atom(text: str) -> Sym:
    return Sym({(text,): 1})


def _subs_atom(atom: str, values: dict[str, int]) -> Dim:
    if _is_name(atom):
        return values.get(atom, Sym.symbol(atom))
    # Opaque atoms are re-parsed: they are built only from symbols, ints and
    # + - * // %, so a tiny evaluator suffices.
    env = {k: v for k, v in values.items()}
    names = {a for a in _names_in(atom)}
    for n in names:
        env.setdefault(n, Sym.symbol(n))
    return _eval_atom(atom, env)


def _names_in(text: str) -> set[str]:
    import re

    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))


def _eval_atom(text: str, env: dict) -> Dim:
    import ast as pyast

    tree = pyast.parse(text, mode="eval")

    def ev(n):
        if isinstance(n, pyast.Expression):
            return ev(n.body)
        if isinstance(n, pyast.Constant):
            return n.value
        if isinstance(n, pyast.Name):
            return env[n.id]
        if isinstance(n, pyast.UnaryOp) and isinstance(n.op, pyast.USub):
            return -ev(n.operand)
        if isinstance(n, pyast.BinOp):
            a, b = ev(n.left), ev(n.right)
            ops = {pyast.Add: lambda: a + b, pyast.Sub: lambda: a - b, pyast.Mult: lambda: a * b,
                   pyast.FloorDiv: lambda: a // b, pyast.Mod: lambda: a % b, pyast.Pow: lambda: a ** b}
            return ops[type(n.op)]()
        raise ValueError(text)

    return ev(tree)


def _as_sym(x) -> Sym | None:
    if isinstance(x, Sym):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return Sym({(): x})
    return None


def _norm(d: dict[Monomial, int]) -> Dim:
    """An int when no symbol is left, else a Sym."""
    d = {m: c for m, c in d.items() if c != 0}
    if not d:
        return 0
    if set(d) == {()}:
        return d[()]
    return Sym(d)


def is_static(d: Dim) -> bool:
    return isinstance(d, int)


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def subs_shape(shape, values: dict[str, int]) -> tuple:
    return tuple(d.subs(values) if isinstance(d, Sym) else d for d in shape)


def numel(shape) -> Dim:
    n: Dim = 1
    for d in shape:
        n = n * d
    return n
