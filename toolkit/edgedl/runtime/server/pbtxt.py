"""A small parser for protobuf text format, enough for Triton's ``config.pbtxt`` (no protobuf dependency).

Grammar handled: ``field: scalar``, ``field [a, b]``, ``field: [a, b]``, ``field { ... }``, ``field: { ... }``,
``field [{...}, {...}]``, ``# comments``, strings in single or double quotes, optional ``,``/``;`` separators.
Every field becomes a list of values (protobuf fields may repeat); messages become dicts of the same shape.
"""

from __future__ import annotations

import re

from edgedl.errors import EdgeDLError

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<punct>[{}\[\]:,;<>])|(?P<word>[^\s{}\[\]:,;<>"'#]+)"""
)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise EdgeDLError(f"config.pbtxt line {line}: cannot read {text[pos:pos + 20]!r}")
        kind = m.lastgroup
        if kind:
            out.append((kind, m.group(kind), text.count("\n", 0, pos) + 1))
        pos = m.end()
    return out


def _scalar(kind: str, value: str):
    if kind == "str":
        return bytes(value[1:-1], "utf-8").decode("unicode_escape")
    if value in ("true", "True"):
        return True
    if value in ("false", "False"):
        return False
    try:
        return int(value, 0)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value  # an enum name such as TYPE_FP32 or KIND_CPU


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0

    def _peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else ("eof", "", self.toks[-1][2] if self.toks else 1)

    def _next(self):
        tok = self._peek()
        self.i += 1
        return tok

    def _fail(self, what: str):
        kind, value, line = self._peek()
        raise EdgeDLError(f"config.pbtxt line {line}: expected {what}, found {value or 'end of file'!r}")

    def message(self, closing: str | None) -> dict:
        fields: dict[str, list] = {}
        while True:
            kind, value, _ = self._peek()
            if closing is None and kind == "eof":
                return fields
            if kind == "punct" and value == closing:
                self.i += 1
                return fields
            if kind == "punct" and value in ",;":
                self.i += 1
                continue
            if kind != "word":
                self._fail("a field name" + (f" or '{closing}'" if closing else ""))
            self.i += 1
            name = value
            if self._peek()[:2] == ("punct", ":"):
                self.i += 1
            fields.setdefault(name, []).extend(self.values())

    def values(self) -> list:
        kind, value, _ = self._peek()
        if kind == "punct" and value == "[":
            self.i += 1
            out = []
            while True:
                kind, value, _ = self._peek()
                if kind == "punct" and value == "]":
                    self.i += 1
                    return out
                if kind == "punct" and value == ",":
                    self.i += 1
                    continue
                out.extend(self.values())
        return [self.value()]

    def value(self):
        kind, value, _ = self._next()
        if kind == "punct" and value in "{<":
            return self.message("}" if value == "{" else ">")
        if kind in ("str", "word"):
            return _scalar(kind, value)
        self.i -= 1
        self._fail("a value")


def parse_pbtxt(text: str) -> dict:
    """Parse protobuf text format into {field: [values]} (nested messages are dicts of the same form)."""
    return _Parser(text).message(None)


def first(fields: dict, name: str, default=None):
    """The first value of a (possibly repeated) field, or ``default``."""
    values = fields.get(name)
    return values[0] if values else default
