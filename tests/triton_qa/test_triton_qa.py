"""Triton's own QA tests, run unchanged (but for the server address) against `edgedl serve` and the real Triton.

qa/L0_http/http_test.py, qa/L0_http/python_http_aio_test.py and the onnx subset of qa/L0_infer/infer_test.py
(BACKENDS=onnx, no ensembles, CPU only) live in tests/triton_qa/qa with their helpers. Each test class runs once per
server on the repository Triton's test.sh gives it (built by qa_models.py), with the model-control mode that
test.sh uses. A test that fails on one server is listed below with the reason and marked xfail(strict): it must
keep failing, so fixing a difference (or a Triton upgrade) shows up here and the table is updated.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import unittest

import pytest

import qa_models
from real_triton import TritonServer

# infer_test.py reads its configuration at import: the onnx backend only, no ensembles, no GPU
_QA_ENV = {"BACKENDS": "onnx", "ENSEMBLES": "0", "TRITON_SERVER_CPU_ONLY": "1"}
_saved_env = {k: os.environ.get(k) for k in _QA_ENV}
os.environ.update(_QA_ENV)

import test_util  # noqa: E402  (tests/triton_qa/qa, put on sys.path by conftest.py)

# TestResultCollector writes test_results.txt into the working directory for Triton's shell scripts and reads
# unittest's result counters, which pytest's result object does not have; the tests themselves are unchanged
test_util.TestResultCollector = unittest.TestCase

import http_test  # noqa: E402
import infer_test  # noqa: E402
import python_http_aio_test  # noqa: E402

for _key, _value in _saved_env.items():
    os.environ.pop(_key) if _value is None else os.environ.__setitem__(_key, _value)

from serve_helpers import ServerProcess, free_port  # noqa: E402

REPOSITORIES = {"http": qa_models.http_models, "examples": qa_models.example_models, "infer": qa_models.infer_models}
# test.sh: http_test.py runs with --model-control-mode=explicit --load-model=*, python_http_aio_test.py with the
# default mode (none), infer_test.py with the default too; edgedl runs in the same --model-control mode
TRITON_MODES = {"http": "explicit", "examples": "none", "infer": "none"}

# Why a QA test fails on the real Triton 2.51 (the tests come from a newer Triton's repository)
TRITON_FAILS = {
    "HttpTest.test_buffer_size_overflow": "answers 500, not 400 with an overflow message",
    "HttpTest.test_duplicate_output_names": "answers an output asked for twice: 200, not 400",
    "HttpTest.test_json_recursion_depth_limit": "has no JSON nesting limit: 120 nested lists are parsed",
    "HttpTest.test_load_oversized_file_parameter": "aborts (uncaught std::filesystem_error on a 256-byte file name)",
    "HttpTest.test_repository_index_deeply_nested_json": "ignores the body of an index request",
}

# Why a QA test fails on edgedl: each an intentional difference, listed in the README's Triton section
EDGEDL_FAILS = {
    "HttpTest.test_load_oversized_file_parameter": "intentional: a file override with a 256-byte name is the "
                                                   "client's error, 400 (newer Tritons: 500; 2.51 aborts)",
    "HttpTest.test_content_encoding_chunked_manually": "intentional: its request has both Content-Length and "
                                                       "Transfer-Encoding: chunked, which is ambiguous (request "
                                                       "smuggling): 400 and close, as RFC 9112 allows",
    "HttpTest.test_negative_dimensions": "intentional: a negative dimension is the client's error, 400 (Triton: 500)",
    "HttpAioClient.test_get_server_metadata": "intentional: the server's name is 'edgedl', not 'triton'",
}

# Not run on either server, and why
SKIPPED = {
    "HttpTest.test_loading_large_invalid_model": "builds a 2.9 GB request (about 11 GB of client memory); edgedl "
                                                 "refuses bodies over --max-body-bytes with 413 before reading them "
                                                 "(tests/serve/test_serve_robustness.py)",
}


class _QAServer:
    """The server one QA class runs against; started again if a test crashed it (Triton 2.51 aborts on some of
    the newer tests' requests), so one crash does not fail every later test."""

    def __init__(self, target: str, kind: str, request, tmp_path_factory, reaper: list):
        self.target, self.kind, self.request, self.reaper = target, kind, request, reaper
        self.models = REPOSITORIES[kind]()
        self.repo = qa_models.write_repository(tmp_path_factory.mktemp(f"qa-{kind}-{target}") / "models",
                                               self.models, target)
        self.start()

    def start(self) -> None:
        if self.target == "triton":
            self.process = TritonServer(self.request.getfixturevalue("triton_install"), self.repo,
                                        TRITON_MODES[self.kind])
            http, grpc = self.process.http, self.process.grpc
        else:
            grpc_port = free_port()
            mode = TRITON_MODES[self.kind]
            self.process = ServerProcess("--model-repository", self.repo, "--grpc-port", grpc_port,
                                         "--model-control", mode, *(("--load-model", "*") if mode == "explicit" else ()))
            http, grpc = self.process.url, f"127.0.0.1:{grpc_port}"
        self.http, self.grpc = http, grpc
        self.point_here()

    def point_here(self) -> None:
        os.environ.update({"TRITON_QA_HTTP": self.http, "TRITON_QA_GRPC": self.grpc,
                           "TRITON_QA_MODEL_COUNT": str(len(self.models))})

    def ensure_alive(self) -> None:
        if self.process.proc.poll() is not None:
            self.start()

    def stop(self) -> None:
        if self.target == "triton":  # Triton takes seconds to unload its models; the session's end waits for it
            self.reaper.append(self.process.stop(wait=False))
        else:
            self.process.stop()


_ADDRESS_ENV = ("TRITON_QA_HTTP", "TRITON_QA_GRPC", "TRITON_QA_MODEL_COUNT")


@pytest.fixture(scope="module")
def qa_servers(triton_reaper):
    """The server of the classes running now: consecutive classes on the same server and repository (InferTest
    and its shared-memory run) share it; the next one stops it first."""
    current: dict = {}
    saved = {k: os.environ.get(k) for k in _ADDRESS_ENV}
    yield current
    for server in current.values():
        server.stop()
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="class", autouse=True)
def qa_server(request, tmp_path_factory, qa_servers, triton_reaper):
    """Start the server the class names (edgedl or triton) on its repository; point the QA helpers at it."""
    key = (request.cls.qa_target, request.cls.qa_repository)
    if key not in qa_servers:
        for server in qa_servers.values():
            server.stop()
        qa_servers.clear()
        qa_servers[key] = _QAServer(*key, request, tmp_path_factory, triton_reaper)
    server = qa_servers[key]
    server.point_here()
    return server


@pytest.fixture(autouse=True)
def qa_server_alive(qa_server):
    qa_server.ensure_alive()
    yield


def _whole_test(*args, **kwargs):
    return contextlib.nullcontext()


def _qa_case(base: type, target: str, repository: str, failures: dict[str, str]) -> type:
    """A subclass of the QA TestCase ``base`` bound to a server, with its known failures marked xfail(strict)."""
    name = f"Test{base.__name__.removeprefix('Test')}_{target}"
    cls = type(name, (base,), {"qa_target": target, "qa_repository": repository, "__module__": __name__,
                               "__test__": True})
    prefix = base.__name__.removeprefix("Test") + "."
    for test, reason in SKIPPED.items():
        if test.startswith(prefix):
            method = getattr(base, test[len(prefix):])
            setattr(cls, method.__name__, pytest.mark.skip(reason=reason)(functools.wraps(method)(
                lambda self: None)))
    for test, reason in failures.items():
        if not test.startswith(prefix):
            continue
        method = getattr(base, test[len(prefix):])  # AttributeError: the table names a test that is gone
        # subTest blocks would report (and xfail) each case on its own; an expected failure is the whole test's
        if inspect.iscoroutinefunction(method):
            async def wrapper(self, _method=method):
                self.subTest = _whole_test
                return await _method(self)
        else:
            def wrapper(self, _method=method):
                self.subTest = _whole_test
                return _method(self)
        wrapper = functools.wraps(method)(wrapper)
        # a failing test's helper threads (test_descriptive_status_code) end in exceptions too: part of the failure
        quiet = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
        setattr(cls, method.__name__, quiet(pytest.mark.xfail(reason=reason, strict=True)(wrapper)))
    return cls


class InferTestSharedMemory(infer_test.InferTest):
    """infer_test.py as Triton's L0_infer also runs it, with TEST_SYSTEM_SHARED_MEMORY=1: every input and output
    of the raw tests in system shared memory (registered through the client; shared memory has no class
    outputs, and the version tests repeat the raw ones)."""

    __test__ = False  # run through the classes _qa_case makes of it

    @pytest.fixture(autouse=True)
    def _in_shared_memory(self, monkeypatch):
        monkeypatch.setattr(infer_test, "TEST_SYSTEM_SHARED_MEMORY", True)


for _name in dir(InferTestSharedMemory):
    if _name.startswith("test_") and not (_name.startswith("test_raw_") and "version" not in _name):
        setattr(InferTestSharedMemory, _name, None)

for _target, _failures in (("edgedl", EDGEDL_FAILS), ("triton", TRITON_FAILS)):
    for _base, _repo in ((http_test.HttpTest, "http"), (python_http_aio_test.TestHttpAioClient, "examples"),
                         (infer_test.InferTest, "infer"), (InferTestSharedMemory, "infer")):
        _case = _qa_case(_base, _target, _repo, _failures)
        globals()[_case.__name__] = _case
del _target, _failures, _base, _repo, _case, _name
