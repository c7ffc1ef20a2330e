"""The HTTP router: a table of (method, path pattern) -> handler, matched segment by segment.

A pattern is a '/'-separated path whose ``{name}`` segments capture that segment as the handler's keyword
argument. Every pattern under ``/v2/models/{model}`` also matches with ``/versions/{version}`` after the model
(Triton's versioned form). Among patterns of the same length, the one with more literal segments wins, so
``/v2/models/stats`` is not the metadata of a model named 'stats'. A trailing '/' is ignored.
"""

from __future__ import annotations

from typing import Callable

from edgedl.runtime.server.memo import Memo

_MODEL = "/v2/models/{model}"
SEEN_PATHS = 1024


class Methods(dict):
    """The handlers of one path pattern, by HTTP method, with the pattern's metrics label and access rule."""

    __slots__ = ("endpoint", "public")

    def __init__(self, endpoint: str, public: bool):
        super().__init__()
        self.endpoint, self.public = endpoint, public


class Router:
    def __init__(self, routes: list[tuple[str, str, Callable, str, bool]]):
        patterns: dict[str, Methods] = {}
        for method, path, handler, endpoint, public in routes:
            variants = [path]
            if path.startswith(_MODEL):
                variants.append(_MODEL + "/versions/{version}" + path[len(_MODEL):])
            for variant in variants:
                methods = patterns.setdefault(variant, Methods(endpoint, public))
                if (methods.endpoint, methods.public) != (endpoint, public) or method in methods:
                    raise ValueError(f"route {method} {variant} conflicts with another")
                methods[method] = handler
        self._by_length: dict[int, list] = {}
        for pattern, methods in patterns.items():
            segments = pattern.split("/")[1:]
            literals = tuple((i, s) for i, s in enumerate(segments) if not s.startswith("{"))
            captures = tuple((i, s[1:-1]) for i, s in enumerate(segments) if s.startswith("{"))
            self._by_length.setdefault(len(segments), []).append((literals, captures, methods))
        for candidates in self._by_length.values():
            candidates.sort(key=lambda c: -len(c[0]))
        self._seen: Memo = Memo(SEEN_PATHS)  # path -> (methods, captures) or None

    def match(self, path: str) -> tuple[Methods, dict[str, str]] | None:
        """-> (the handlers by method, the captured segments: not to be changed) for ``path``, or None when no
        pattern matches. The paths a server sees repeat (a few models' infer paths); the last ones matched are
        kept, a bounded number (clients choose paths)."""
        found = self._seen.get(path, False)
        if found is False:
            found = self._seen.keep(path, self._match(path))
        return found

    def _match(self, path: str) -> tuple[Methods, dict[str, str]] | None:
        segments = path.rstrip("/").split("/")[1:]
        for literals, captures, methods in self._by_length.get(len(segments), ()):
            for i, literal in literals:
                if segments[i] != literal:
                    break
            else:
                return methods, {name: segments[i] for i, name in captures}
        return None
