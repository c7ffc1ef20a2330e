"""The HTTP router: literal segments before captures, Triton's /versions/{version} form, trailing slashes, no
match, conflicting routes refused, and its memory of matched paths bounded (clients choose paths)."""

from __future__ import annotations

import pytest

from edgedl.runtime.server import routes
from edgedl.runtime.server.app import ROUTES
from edgedl.runtime.server.routes import Router


def _router():
    return Router([(method, path, f"{method} {path}", endpoint, public) for method, path, _, endpoint, public in ROUTES])


def test_paths_match_their_handlers_and_captures():
    r = _router()
    methods, params = r.match("/v2/models/cnn/infer")
    assert methods["POST"] == "POST /v2/models/{model}/infer" and params == {"model": "cnn"}
    methods, params = r.match("/v2/models/cnn/versions/2/infer/")
    assert methods["POST"] == "POST /v2/models/{model}/infer" and params == {"model": "cnn", "version": "2"}
    methods, params = r.match("/v2/models/stats")  # the literal wins over a model named 'stats'
    assert methods["GET"] == "GET /v2/models/stats" and params == {} and methods.endpoint == "stats"
    methods, params = r.match("/v2/models/stats/ready")  # ...which still has its own paths
    assert methods["GET"] == "GET /v2/models/{model}/ready" and params == {"model": "stats"}
    assert r.match("/v2/health/live")[0].public and not r.match("/v2/health/ready")[0].public
    assert r.match("/v2/models/cnn/nope") is None and r.match("/") is None and r.match("/v2/models/a/b/c/d/e") is None


def test_conflicting_routes_are_refused():
    with pytest.raises(ValueError, match="conflicts"):
        Router([("GET", "/v2/x", "a", "x", False), ("GET", "/v2/x", "b", "x", False)])
    with pytest.raises(ValueError, match="conflicts"):  # one pattern, two access rules
        Router([("GET", "/v2/x", "a", "x", False), ("POST", "/v2/x", "b", "x", True)])


def test_matched_paths_are_remembered_within_a_bound(monkeypatch):
    monkeypatch.setattr(routes, "SEEN_PATHS", 8)
    r = _router()
    first = r.match("/v2/models/m0/infer")
    for i in range(1, 50):  # many distinct paths: the memory never holds more than the bound
        assert r.match(f"/v2/models/m{i}/infer")[1] == {"model": f"m{i}"}
        assert r.match(f"/unknown/{i}") is None
        assert len(r._seen) <= 8
    assert r.match("/v2/models/m0/infer") == first  # forgotten and matched again: the same answer
