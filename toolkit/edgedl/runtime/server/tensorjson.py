"""JSON request bodies whose tensors go straight into numpy, without ever holding the GIL for long.

Small bodies (under ``STREAM_ABOVE_BYTES``) go to the standard library's C parser, the fastest for them. A larger
body would there become lists of Python numbers (~32 bytes each, 3x a typical JSON body) built in one C call
that holds the GIL - and the event loop - for the whole parse. So a large body is read by ``_Parser`` instead:
the document's structure (objects, names, shapes, strings) the usual way, but each large array of numbers is
only located and checked (``NumberArray``: its bytes, element count, nesting shape, integer or float), and later
parsed by numpy straight into the input's dtype once the tensor's datatype is known (``NumberArray.to_numpy``).
Every scan works on ``CHUNK``-sized pieces: each holds the GIL for well under a millisecond, and the Python loop
between pieces lets the event loop run.

Number syntax is JSON's (with NaN and Infinity, as Python's json reads them), checked per piece where numpy's
parser is more lenient. Nesting is limited to ``MAX_DEPTH`` levels, as in Triton (a 400, not a RecursionError).

With orjson installed (the ``serve`` extra; wheels for x86_64, aarch64 and armv7l), each piece's numbers are
read by orjson (strict JSON, ~10x faster than numpy's text parser, no syntax checks needed after it); a piece it
refuses or would read differently from Python's json (NaN, Infinity, 1e400, 19+ digit integers, malformed
numbers) goes the numpy way, which says what is wrong. A flat array of numbers written as floats (the usual large
tensor, an image in FP32) is read by orjson in the scan itself, the same pieces read the same way, one pass
instead of two.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

try:
    import orjson
except ImportError:  # a platform without its wheel: numpy reads the numbers
    orjson = None

STREAM_ABOVE_BYTES = 64 * 1024
CHUNK = 64 * 1024  # a piece's numbers as orjson's Python objects: ~0.2 MiB, ~0.3 ms of GIL
MAX_DEPTH = 100
TOO_DEEP = f"JSON nesting depth exceeds maximum allowed limit ({MAX_DEPTH})"  # Triton's words
_SMALL_ARRAY = 4096  # numeric arrays shorter than this (shapes, small data) become plain lists

_SPACE = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS = ((b"true", True), (b"false", False), (b"null", None), (b"NaN", math.nan), (b"Infinity", math.inf),
             (b"-Infinity", -math.inf))
_NUM = rb"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|NaN|-?Infinity)"
_NUMBER_LIST = re.compile(rb"[ \t\n\r]*" + _NUM + rb"(?:[ \t\n\r]*,[ \t\n\r]*" + _NUM + rb")*[ \t\n\r]*")
_NUMERIC_BYTES = b"0123456789+-.eE,[] \t\n\r"
_NAN_INF_LETTERS = b"NaInfity"
_NUMBER_ARRAY_BYTES = _NUMERIC_BYTES + _NAN_INF_LETTERS
_NOT_SKELETON = bytes(c for c in range(256) if c not in b"[],")
_NOT_IN_FLAT_NUMBERS = (b'"', b"t", b"f", b"n", b"{", b"[", b"]")  # strings, true/false/null, objects, arrays
_NUMBER_START = frozenset(b"-0123456789NI")
_FLOAT_MARKS = (b".", b"e", b"E", b"N", b"I")
_FLOAT64 = np.dtype(np.float64)
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_UNREAD = object()


class DecodeError(ValueError):
    """The body is not valid JSON (or not a usable one); the message says where."""


def loads(raw: bytes | bytearray) -> Any:
    """Parse a request body; large numeric arrays come back as ``NumberArray`` (only from large bodies)."""
    if len(raw) < STREAM_ABOVE_BYTES:
        # orjson reads the strict JSON of a small request in a fraction of json's time; what it refuses (NaN,
        # Infinity, another encoding, an error) and 19+ digit integers (which it would read as floats) are read by
        # json, as before, whose messages and leniency stay the server's
        doc = _UNREAD
        if orjson is not None and _LONG_DIGITS.search(raw) is None:
            try:
                doc = orjson.loads(raw)
            except ValueError:  # orjson.JSONDecodeError
                pass
        if doc is _UNREAD:
            try:
                doc = json.loads(raw)
            except RecursionError:
                raise DecodeError(TOO_DEEP) from None
        if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(doc, MAX_DEPTH):
            raise DecodeError(TOO_DEEP)
        return doc
    return _Parser(raw).document()


def _deeper_than(doc, limit: int) -> bool:
    """Whether objects and arrays nest more than ``limit`` levels in ``doc`` (iteratively: no recursion)."""
    stack = [(doc, 1)] if doc.__class__ is list or doc.__class__ is dict else []
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if value.__class__ is dict else value
        for child in children:
            if child.__class__ is list or child.__class__ is dict:
                stack.append((child, depth + 1))
    return False


def plain(value):
    """``value`` with every NumberArray inside a list turned into a list (a mixed, irregular array)."""
    if isinstance(value, NumberArray):
        try:
            return json.loads(bytes(value.buf[value.start:value.end]))
        except ValueError as exc:
            raise DecodeError(f"{exc.args[0].split(':')[0]} in an array near char {value.start}") from None
    if isinstance(value, list) and any(isinstance(v, (list, NumberArray)) for v in value):
        return [plain(v) for v in value]
    return value


def _pieces(start: int, end: int, buf, cut: bool):
    """[a, b) pieces of about CHUNK bytes covering [start, end), cut after a comma when ``cut``."""
    a = start
    while a < end:
        b = min(a + CHUNK, end)
        if cut and b < end:
            comma = buf.rfind(b",", a, b)
            if comma <= a:
                comma = buf.find(b",", b, end)
            b = end if comma < 0 else comma
        yield a, b
        a = b + 1 if cut and b < end else b


class NumberArray:
    """A (possibly nested) JSON array of numbers, located in the body but not parsed yet.

    ``count`` is the number of values, ``is_float`` whether any is written as a float (a fraction, an
    exponent, NaN or Infinity), ``shape`` the nesting shape or None when the nesting is not rectangular.
    """

    __slots__ = ("buf", "start", "end", "count", "is_float", "shape", "floats")

    def __init__(self, buf, start: int, end: int, count: int, is_float: bool, shape: tuple[int, ...] | None,
                 floats: np.ndarray | None = None):
        self.buf, self.start, self.end = buf, start, end
        self.count, self.is_float, self.shape = count, is_float, shape
        self.floats = floats  # already read (``_read_floats``): float64, as ``to_numpy`` would read them

    def to_numpy(self, dtype: np.dtype) -> np.ndarray:
        """The values as a flat array of ``dtype`` (integer or floating); DecodeError on bad numbers, and
        OverflowError when an integer does not fit ``dtype``."""
        if self.floats is not None and dtype.kind == "f":
            return self.floats.astype(dtype, copy=False)
        out = np.empty(self.count, dtype=dtype)
        integer = dtype.kind in "iu"
        parse_as = np.dtype(np.int64) if integer else dtype  # up to 18 digits; longer ones go through Python
        info = np.iinfo(dtype) if integer else None
        pos = 0
        flat = self.shape is not None and len(self.shape) == 1
        for a, text in _number_texts(self.buf, self.start, self.end, flat):
            values = _orjson_piece(text, integer, dtype)
            if values is None:
                values = _numpy_piece(text, a, integer, parse_as)
            if integer and values.size and (values.min() < info.min or values.max() > info.max):
                raise OverflowError
            out[pos:pos + values.size] = values
            pos += values.size
        return out


def _number_texts(buf, start: int, end: int, flat: bool):
    """(position, the numbers of one piece, comma-separated) for each piece of the array [start, end); ``flat``:
    brackets only at the ends, cut off (else every bracket is dropped)."""
    with memoryview(buf) as view:  # one copy per piece, from bytes or bytearray alike
        for a, b in _pieces(start, end, buf, cut=True):
            if flat:
                yield a, bytes(view[max(a, start + 1):min(b, end - 1)])
            else:
                yield a, bytes(view[a:b]).translate(None, b"[]")


def _orjson_piece(text: bytes, integer: bool, dtype: np.dtype) -> np.ndarray | None:
    """The piece's numbers read by orjson (strict JSON, ~10x numpy's text parser), or None where orjson is missing
    or does not read them as Python's json does: NaN, Infinity, 1e400, integers of 19+ digits (past 64 bits it
    makes floats of them), and anything malformed (the numpy path says what is wrong)."""
    if orjson is None or integer and _LONG_DIGITS.search(text):
        return None
    try:
        values = orjson.loads(b"[" + text + b"]")  # only numbers: ``numbers`` let no other letter through
    except orjson.JSONDecodeError:
        return None
    if not values:  # only blanks: the numpy path words it
        return None
    if integer:
        return np.array(values, dtype=np.int64)
    # via float64, as the stdlib path (fromiter: as np.array, a little faster)
    return np.fromiter(values, np.float64, len(values)).astype(dtype, copy=False)


def _read_floats(buf, start: int, end: int) -> np.ndarray | None:
    """The flat array [start, end) read by orjson in one pass, when it is what a large tensor mostly is: numbers
    only, some written as floats (an image in FP32), all strict JSON. The same pieces and the same reading as
    ``to_numpy`` (float64, then the input's dtype), without the separate scan before it. None for anything
    else - integers only (their dtype decides how they are read), NaN or Infinity, nested arrays, other values,
    malformed numbers - which the scan and ``to_numpy`` read as before."""
    parts, is_float = [], False
    for _, text in _number_texts(buf, start, end, flat=True):
        if any(c in text for c in _NOT_IN_FLAT_NUMBERS):  # orjson would read these as values
            return None
        try:
            values = _orjson_piece(text, False, _FLOAT64)
        except OverflowError:  # a huge integer: the numpy path says so
            return None
        if values is None:  # NaN, 1e400, an empty value, ...
            return None
        parts.append(values)
        is_float = is_float or _written_as_float(text)
    if not is_float:
        return None
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _written_as_float(text: bytes) -> bool:
    """Whether a number in ``text`` is written as a float: a fraction, an exponent, NaN or Infinity."""
    return any(mark in text for mark in _FLOAT_MARKS)


def _numpy_piece(text: bytes, at: int, integer: bool, parse_as: np.dtype) -> np.ndarray:
    _check_numbers(text, at)
    if integer and _LONG_DIGITS.search(text):  # may not fit int64: Python's ints decide
        values = np.array(json.loads(b"[" + text + b"]"))
        if values.dtype.kind not in "iu":
            raise OverflowError
        return values
    try:
        values = np.fromstring(text, dtype=parse_as, sep=",")
    except ValueError:
        raise DecodeError(f"malformed number in an array near char {at}") from None
    if values.size != text.count(b",") + 1:
        raise DecodeError(f"malformed number in an array near char {at}")
    return values


def _count(buf, byte: int, start: int = 0, end: int | None = None) -> int:
    """How often ``byte`` occurs in ``buf[start:end]``: numpy counts ~8x faster than ``bytes.count``."""
    end = len(buf) if end is None else end
    return int(np.count_nonzero(np.frombuffer(buf, np.uint8, end - start, start) == byte)) if end > start else 0


def _check_numbers(text: bytes, at: int) -> None:
    """JSON number syntax where numpy's parser is lenient: '+1', '.5', '1.', '01', 'nan', 'inf', and empty
    values (numpy reads '1, ,2' as [1, -1, 2]). Vectorised over the piece's bytes (numpy releases the GIL)."""
    compact = text.translate(None, b" \t\n\r") if any(ws in text for ws in (b" ", b"\n", b"\t", b"\r")) else text
    if not compact or compact[:1] == b"," or compact[-1:] == b"," or b",," in compact:
        raise DecodeError(f"malformed number in an array near char {at}: an empty value")
    if text.translate(None, _NUMERIC_BYTES):  # letters: only NaN / Infinity are numbers
        if _NUMBER_LIST.fullmatch(text) is None:
            raise DecodeError(f"malformed number in an array near char {at}")
        return
    c = np.frombuffer(b",," + text + b",", np.uint8)  # c[2:-1] is the text; two bytes before it, one after
    here, before, before2, after = c[2:-1], c[1:-2], c[:-3], c[3:]
    digit_before, digit_after = (before >= 0x30) & (before <= 0x39), (after >= 0x30) & (after <= 0x39)
    if b"." in text and ((here == 0x2E) & ~(digit_before & digit_after)).any():
        raise DecodeError(f"malformed number in an array near char {at}: a '.' needs digits on both sides")
    if b"+" in text and ((here == 0x2B) & (before != 0x65) & (before != 0x45)).any():
        raise DecodeError(f"malformed number in an array near char {at}: '+' outside an exponent")
    # a leading zero: '0' then a digit, where a number starts (after a separator, or a '-' not in an exponent)
    zero_digit = (here == 0x30) & digit_after
    if zero_digit.any():
        starts = (before == 0x2C) | (before == 0x20) | (before == 0x09) | (before == 0x0A) | (before == 0x0D)
        starts |= (before == 0x2D) & (before2 != 0x65) & (before2 != 0x45)
        if (zero_digit & starts).any():
            raise DecodeError(f"malformed number in an array near char {at}: a leading zero")


def _rectangular(skeleton: bytes, depth: int) -> tuple[int, ...] | None:
    """The shape of a nested array from its brackets and commas (b'[[,],[,]]' -> (2, 2)), None if ragged."""
    lengths = []
    for level in range(depth):  # the first array at each level ends at the first run of (depth - level) ']'
        run = b"]" * (depth - level)
        end = skeleton.find(run)
        if end < 0:
            return None
        lengths.append(end + len(run) - level)
    shape, inner = [], 0
    for length in reversed(lengths):
        size, rest = divmod(length - 1, inner + 1)
        if rest or size < 1:
            return None
        shape.append(size)
        inner = length
    shape.reverse()
    expected = b""
    for size in reversed(shape):
        expected = b"[" + b",".join([expected] * size) + b"]"
    return tuple(shape) if expected == skeleton else None


class _Parser:
    def __init__(self, buf):
        self.buf = buf

    def fail(self, what: str, pos: int):
        raise DecodeError(f"{what}: char {pos}")

    def document(self) -> Any:
        value, pos = self.value(_SPACE.match(self.buf, 0).end(), 0)
        pos = _SPACE.match(self.buf, pos).end()
        if pos != len(self.buf):
            self.fail("Extra data", pos)
        return value

    def value(self, pos: int, depth: int):
        buf = self.buf
        if pos >= len(buf):
            self.fail("Expecting value", pos)
        c = buf[pos]
        if c == 0x7B:  # {
            return self.object(pos, depth + 1)
        if c == 0x5B:  # [
            return self.array(pos, depth + 1)
        if c == 0x22:  # "
            return self.string(pos)
        m = _NUMBER.match(buf, pos)
        if m is not None:
            try:
                return (float(m.group()) if m.group(1) or m.group(2) else int(m.group())), m.end()
            except ValueError as exc:  # an integer past Python's digit limit
                raise DecodeError(f"{exc}: char {pos}") from None
        for literal, val in _LITERALS:
            if buf.startswith(literal, pos):
                return val, pos + len(literal)
        self.fail("Expecting value", pos)

    def string(self, pos: int):
        m = _STRING.match(self.buf, pos)
        if m is None:
            self.fail("Unterminated string or invalid character in string", pos)
        raw = m.group()
        try:
            return (json.loads(raw) if b"\\" in raw else raw[1:-1].decode("utf-8")), m.end()
        except (UnicodeDecodeError, ValueError):
            self.fail("Invalid string (not UTF-8, or a bad escape)", pos)

    def _deeper(self, depth: int, pos: int) -> None:
        if depth > MAX_DEPTH:
            self.fail(TOO_DEEP, pos)

    def _items(self, pos: int, close: bytes, item) -> int:
        """``item(pos) -> end`` for each comma-separated item after the opening bracket at ``pos``, up to
        ``close``; -> the position after ``close``."""
        buf, space = self.buf, _SPACE.match
        pos = space(buf, pos + 1).end()
        if buf[pos:pos + 1] == close:
            return pos + 1
        while True:
            pos = space(buf, item(pos)).end()
            c = buf[pos:pos + 1]
            if c == close:
                return pos + 1
            if c != b",":
                self.fail("Expecting ',' delimiter", pos)
            pos = space(buf, pos + 1).end()

    def object(self, pos: int, depth: int):
        self._deeper(depth, pos)
        buf, space = self.buf, _SPACE.match
        out = {}

        def member(pos):
            if buf[pos:pos + 1] != b'"':
                self.fail("Expecting property name enclosed in double quotes", pos)
            key, pos = self.string(pos)
            pos = space(buf, pos).end()
            if buf[pos:pos + 1] != b":":
                self.fail("Expecting ':' delimiter", pos)
            out[key], pos = self.value(space(buf, pos + 1).end(), depth)
            return pos

        return out, self._items(pos, b"}", member)

    def array(self, pos: int, depth: int):
        self._deeper(depth, pos)
        found = self.numbers(pos, depth)
        if found is not None:
            return found
        out = []

        def element(pos):
            value, pos = self.value(pos, depth)
            out.append(value)
            return pos

        return out, self._items(pos, b"]", element)

    def numbers(self, start: int, depth: int):
        """(NumberArray or list, end) if the array at ``start`` holds only numbers, else None."""
        buf, space = self.buf, _SPACE.match
        nesting, pos = 0, start
        while buf[pos:pos + 1] == b"[":
            nesting += 1
            self._deeper(depth + nesting - 1, pos)
            pos = space(buf, pos + 1).end()
        if pos >= len(buf) or buf[pos] not in _NUMBER_START:
            return None
        end = self._matching_bracket(start)
        if end is None:
            return None
        if end - start < _SMALL_ARRAY:
            try:
                return json.loads(bytes(buf[start:end])), end
            except (ValueError, RecursionError):
                return None  # not numbers after all; the general parser says what is wrong
        if nesting == 1 and orjson is not None:
            floats = _read_floats(buf, start, end)
            if floats is not None:
                return NumberArray(buf, start, end, floats.size, True, (floats.size,), floats), end
        commas = opens = closes = 0
        is_float = False
        skeleton = []
        with memoryview(buf) as view:
            for a, b in _pieces(start, end, buf, cut=False):
                piece = bytes(view[a:b])
                if piece.translate(None, _NUMBER_ARRAY_BYTES):
                    return None  # strings, objects, true/false/null: the general parser
                commas += _count(piece, 0x2C)
                is_float = is_float or _written_as_float(piece)
                if nesting == 1:
                    opens += _count(piece, 0x5B)
                    closes += _count(piece, 0x5D)
                else:
                    skeleton.append(piece.translate(None, _NOT_SKELETON))
        if nesting == 1:
            shape = (commas + 1,) if opens == closes == 1 else None
        else:
            shape = _rectangular(b"".join(skeleton), nesting)
        return NumberArray(buf, start, end, commas + 1, is_float, shape), end

    def _matching_bracket(self, start: int) -> int | None:
        """The end of the array at ``start``, counting brackets only (right when it holds only numbers)."""
        buf, level, pos, n = self.buf, 0, start, len(self.buf)
        while pos < n:
            limit = min(pos + CHUNK, n)
            close = buf.find(b"]", pos, limit)
            if close < 0:
                level += _count(buf, 0x5B, pos, limit)
                pos = limit
                continue
            level += _count(buf, 0x5B, pos, close) - 1
            pos = close + 1
            if level <= 0:
                return pos
        return None
