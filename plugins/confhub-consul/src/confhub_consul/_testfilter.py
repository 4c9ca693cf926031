"""A subset of HashiCorp's ``go-bexpr`` filter language, for the test server's ``?filter=``.

Enough for the filters a registry client writes (``shared/consul-api.md`` 2.14, item 69)::

    Service.Meta.zone == "a"
    "v2" in Service.Tags and Service.ID != "x"
    not (Service.Port == 8080) or Service.Tags is empty

Grammar: ``or`` of ``and`` of ``not``-able terms; a term is a parenthesised expression or a
match: ``SEL == V``, ``SEL != V``, ``V in SEL``, ``V not in SEL``, ``SEL contains V``,
``SEL not contains V``, ``SEL is empty``, ``SEL is not empty``, ``SEL matches V``,
``SEL not matches V``. Values are ``"quoted"``, ```raw```, numbers or bare words. A selector
is dotted field names into the JSON object being filtered; its first name must be a field of
that object. A malformed filter raises :class:`FilterError` (the server answers 400).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["FilterError", "compile_filter"]

Predicate = Callable[[Mapping[str, Any]], bool]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<op>==|!=|\(|\))
      | (?P<word>[A-Za-z0-9_\-.:/]+)
    )""",
    re.VERBOSE,
)


class FilterError(ValueError):
    """The filter expression does not parse (Consul answers 400 ``Failed to create
    boolean expression evaluator``)."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"1:{pos + 1}: unexpected character {text[pos]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = json.loads(value)
            kind = "value"
        elif kind == "raw":
            value, kind = value[1:-1], "value"
        out.append((kind, value))
    return out


class _Parser:
    def __init__(self, text: str, fields: frozenset[str]) -> None:
        self.toks = _tokens(text)
        self.pos = 0
        self.fields = fields

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        i = self.pos + offset
        return self.toks[i] if i < len(self.toks) else None

    def word(self, *words: str) -> bool:
        """Consume the given keyword sequence if it comes next."""
        for i, w in enumerate(words):
            tok = self.peek(i)
            if tok is None or tok[0] != "word" or tok[1] != w:
                return False
        self.pos += len(words)
        return True

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise FilterError("unexpected end of filter expression")
        self.pos += 1
        return tok

    def parse(self) -> Predicate:
        if not self.toks:
            raise FilterError("empty filter expression")
        pred = self.or_()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def or_(self) -> Predicate:
        terms = [self.and_()]
        while self.word("or"):
            terms.append(self.and_())
        return terms[0] if len(terms) == 1 else lambda d: any(t(d) for t in terms)

    def and_(self) -> Predicate:
        terms = [self.not_()]
        while self.word("and"):
            terms.append(self.not_())
        return terms[0] if len(terms) == 1 else lambda d: all(t(d) for t in terms)

    def not_(self) -> Predicate:
        if self.word("not"):
            inner = self.not_()
            return lambda d: not inner(d)
        return self.primary()

    def primary(self) -> Predicate:
        tok = self.peek()
        if tok == ("op", "("):
            self.pos += 1
            inner = self.or_()
            if self.take() != ("op", ")"):
                raise FilterError("missing closing parenthesis")
            return inner
        # "VALUE in SEL" / "VALUE not in SEL"
        nxt = self.peek(1)
        if tok is not None and nxt is not None and nxt in {("word", "in"), ("word", "not")}:
            after = self.peek(2)
            if nxt == ("word", "in") or after == ("word", "in"):
                value = self.take()[1]
                negate = self.word("not", "in")
                if not negate and not self.word("in"):
                    raise FilterError("expected 'in'")
                sel = self.selector()
                return _negate(lambda d: _contains(sel(d), value), negate)
        sel = self.selector()
        if self.word("is", "empty"):
            return lambda d: _empty(sel(d))
        if self.word("is", "not", "empty"):
            return lambda d: not _empty(sel(d))
        op = self.take()
        if op in {("op", "=="), ("op", "!=")}:
            value = self.value()
            return _negate(lambda d: _equal(sel(d), value), op[1] == "!=")
        negate = op == ("word", "not")
        if negate:
            op = self.take()
        if op == ("word", "contains"):
            value = self.value()
            return _negate(lambda d: _contains(sel(d), value), negate)
        if op == ("word", "matches"):
            try:
                pattern = re.compile(self.value())
            except re.error as exc:
                raise FilterError(f"bad regular expression: {exc}") from exc
            return _negate(lambda d: pattern.search(_text(sel(d))) is not None, negate)
        raise FilterError(f"unexpected {op[1]!r}: expected ==, !=, in, contains, matches or is")

    def value(self) -> str:
        kind, value = self.take()
        if kind not in {"value", "word"}:
            raise FilterError(f"expected a value, got {value!r}")
        return value

    def selector(self) -> Callable[[Mapping[str, Any]], object]:
        kind, text = self.take()
        if kind != "word" or not re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*", text
        ):
            raise FilterError(f"expected a selector, got {text!r}")
        parts = text.split(".")
        if parts[0] not in self.fields:
            raise FilterError(f'Selector "{text}" is not valid')

        def get(d: Mapping[str, Any]) -> object:
            cur: object = d
            for part in parts:
                if isinstance(cur, Mapping):
                    cur = cur.get(part)
                elif isinstance(cur, list):
                    cur = [c.get(part) if isinstance(c, Mapping) else None for c in cur]
                else:
                    return None
            return cur

        return get


def _negate(pred: Predicate, negate: bool) -> Predicate:
    return (lambda d: not pred(d)) if negate else pred


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _equal(found: object, value: str) -> bool:
    if isinstance(found, list):
        return any(_text(f) == value for f in found)
    return _text(found) == value


def _contains(found: object, value: str) -> bool:
    if isinstance(found, Mapping):
        return value in found
    if isinstance(found, list):
        return any(_text(f) == value for f in found)
    return value in _text(found)


def _empty(found: object) -> bool:
    if isinstance(found, Mapping | list | str):
        return len(found) == 0
    return found is None


def compile_filter(text: str, fields: frozenset[str]) -> Predicate:
    """Compile ``text`` into a predicate over JSON objects whose top-level fields are
    ``fields``; raise :class:`FilterError` when it does not parse."""
    return _Parser(text, fields).parse()
