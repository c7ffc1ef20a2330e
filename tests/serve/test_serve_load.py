"""Under load: 32 concurrent clients with no cross-talk between batched requests, a bounded queue that answers
503, reload under load without a failed request, and a SIGTERM that drains in-flight requests."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serve_helpers import ServerProcess, place, slow_model

CLIENTS = 32
REQUESTS_PER_CLIENT = 200


def _input(name, arr, binary):
    i = httpclient.InferInput(name, list(arr.shape), "FP32")
    i.set_data_from_numpy(arr, binary_data=binary)
    return i


def _in_threads(fn, args, timeout_s: float) -> None:
    """``fn(a)`` for every ``a`` at once, one thread each; back when all are done (or ``timeout_s`` each)."""
    threads = [threading.Thread(target=fn, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)


def _metric(url: str, prefix: str) -> float:
    text = urllib.request.urlopen(f"http://{url}/metrics", timeout=10).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(prefix))


def test_32_clients_no_cross_talk(server, repository, reference):
    """Every response equals in-process onnxruntime output for its own request (mixed models, JSON/binary)."""
    rng = np.random.default_rng(0)
    plans = []  # per client: [(model, version, input name, x, binary_in, binary_out, expected)]
    rows_sent = {"cnn": 0}
    for _ in range(CLIENTS):
        plan = []
        for _ in range(REQUESTS_PER_CLIENT):
            model = rng.choice(["cnn", "cnn", "mlp", "lstm", "transformer"])
            batch = int(rng.integers(1, 4))
            version = ""
            if model == "cnn":
                name, x = "image", rng.random((batch, 1, 8, 8), dtype=np.float32)
                rows_sent["cnn"] += batch
            elif model == "mlp":
                name, x = "pixels", rng.random((batch, 64), dtype=np.float32)
                version = str(rng.choice(["", "1"]))
            else:
                name = "rows" if model == "lstm" else "tokens"
                x = rng.random((batch, int(rng.choice([3, 5])), 8), dtype=np.float32)
            path = repository / model / (version or ("2" if model == "mlp" else "1")) / "model.onnx"
            want = reference(path, {name: x})["logits"]
            plan.append((str(model), version, name, x, bool(rng.integers(2)), bool(rng.integers(2)), want))
        plans.append(plan)
    errors, done = [], [0]
    lock = threading.Lock()
    batch_sum_before = _metric(server.url, 'edgedl_inference_batch_size_sum{model="cnn"')

    def client(plan):
        c = httpclient.InferenceServerClient(server.url, connection_timeout=60, network_timeout=60)
        try:
            for k, (model, version, name, x, bin_in, bin_out, want) in enumerate(plan):
                try:
                    r = c.infer(model, [_input(name, x, bin_in)], model_version=version, request_id=f"r{k}",
                                outputs=[httpclient.InferRequestedOutput("logits", binary_data=bin_out)])
                    got = r.as_numpy("logits")
                    if r.get_response()["id"] != f"r{k}" or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                        errors.append(f"{model} request {k}: wrong output (max diff "
                                      f"{np.abs(got - want).max() if got.shape == want.shape else got.shape})")
                except Exception as exc:  # noqa: BLE001 - collected and reported below
                    errors.append(f"{model} request {k}: {exc}")
                with lock:
                    done[0] += 1
        finally:
            c.close()

    _in_threads(client, plans, 300)
    assert not errors, f"{len(errors)} failures, first: {errors[:5]}"
    assert done[0] == CLIENTS * REQUESTS_PER_CLIENT
    # the batcher really stacked requests: the runs' rows add up to more than the rows sent
    rows_run = _metric(server.url, 'edgedl_inference_batch_size_sum{model="cnn"') - batch_sum_before
    assert rows_run > rows_sent["cnn"], (rows_run, rows_sent)


def test_queue_bound_answers_503(built, tmp_path):
    repo = tmp_path / "repo"
    place(repo, "slow", 1, built["slow"], "instance_group [ { count: 1 kind: KIND_CPU } ]\n")
    # ~0.1 s of compute per request on one thread: 16 requests released together surely overrun a queue of 2 even
    # when a loaded machine spreads their arrival (8 ms ones once all got through one by one)
    x = np.random.default_rng(1).random((1024, 512), dtype=np.float32)
    statuses, messages = [], []

    with ServerProcess("--model-repository", repo, "--max-queue", "2", "--threads", "1") as proc:
        start = threading.Barrier(16)

        def one(wait=True):
            c = httpclient.InferenceServerClient(proc.url, network_timeout=120)
            request = [_input("x", x, True)]
            if wait:
                start.wait(30)
            try:
                c.infer("slow", request)
                statuses.append(200)
            except InferenceServerException as exc:
                statuses.append(int(exc.status()))
                messages.append(exc.message())
            finally:
                c.close()

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert statuses.count(503) >= 1 and statuses.count(200) >= 2, statuses
        assert set(statuses) == {200, 503}
        assert all("limit 2" in m for m in messages), messages
        one(wait=False)  # still serving
        assert statuses[-1] == 200


def test_reload_under_load_loses_nothing(built, tmp_path, reference):
    repo = tmp_path / "repo"
    target = place(repo, "gemm", 1, built["gemm_a"], "max_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 500 }\n")
    place(repo, "plain", 1, built["gemm_a"])
    x = np.random.default_rng(2).random((1, 64), dtype=np.float32)
    out_a = reference(built["gemm_a"], {"pixels": x})["logits"]
    out_b = reference(built["gemm_b"], {"pixels": x})["logits"]
    seen = {"a": 0, "b": 0}
    errors = []
    stop = threading.Event()

    with ServerProcess("--model-repository", repo, "--model-control", "explicit", "--load-model", "*") as proc:
        def hammer(model):
            c = httpclient.InferenceServerClient(proc.url, network_timeout=60)
            try:
                while not stop.is_set():
                    try:
                        got = c.infer(model, [_input("pixels", x, True)]).as_numpy("logits")
                    except Exception as exc:  # noqa: BLE001
                        errors.append(repr(exc))
                        continue
                    if np.allclose(got, out_a, atol=1e-5):
                        seen["a"] += 1
                    elif np.allclose(got, out_b, atol=1e-5):
                        seen["b"] += 1
                    else:
                        errors.append("output matches neither model")
            finally:
                c.close()

        threads = [threading.Thread(target=hammer, args=(m,)) for m in ("gemm",) * 6 + ("plain",) * 2]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            target.write_bytes(built["gemm_b"].read_bytes())
            (repo / "plain/1/model.onnx").write_bytes(built["gemm_b"].read_bytes())
            for _ in range(3):  # reload through the repository API, repeatedly, while requests flow
                req = urllib.request.Request(f"http://{proc.url}/v2/repository/models/gemm/load", data=b"",
                                             method="POST")
                assert urllib.request.urlopen(req, timeout=30).status == 200
                time.sleep(0.3)
            b_after_api = seen["b"]
            target.write_bytes(built["gemm_a"].read_bytes())
            proc.signal(signal.SIGHUP)  # reload everything
            deadline = time.monotonic() + 20
            while "reloaded" not in proc.stderr and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors[:5]
        assert b_after_api > 0 and seen["a"] > 0
        assert "reloaded gemm, plain" in proc.stderr
        c = httpclient.InferenceServerClient(proc.url)
        np.testing.assert_allclose(c.infer("gemm", [_input("pixels", x, True)]).as_numpy("logits"), out_a, atol=1e-5)
        np.testing.assert_allclose(c.infer("plain", [_input("pixels", x, True)]).as_numpy("logits"), out_b, atol=1e-5)
        # unload: the model disappears from the index and answers 404; a load brings it back
        urllib.request.urlopen(urllib.request.Request(f"http://{proc.url}/v2/repository/models/plain/unload",
                                                      data=b"", method="POST"), timeout=30)
        assert not c.is_model_ready("plain")
        index = {m["name"]: m["state"] for m in c.get_model_repository_index()}
        assert index == {"gemm": "READY", "plain": "UNAVAILABLE"}
        with pytest.raises(InferenceServerException) as err:
            c.infer("plain", [_input("pixels", x, True)])
        assert err.value.status() == "404"
        c.load_model("plain")
        assert c.is_model_ready("plain")
        c.close()


def test_sigterm_drains_in_flight_requests(built, tmp_path):
    repo = tmp_path / "repo"
    # a deeper model than the shared one: a few seconds of compute on one thread even on a fast CPU, so the
    # request is surely still running when the SIGTERM arrives (CI once finished the 0.5 s one before the poll)
    place(repo, "slow", 1, slow_model(tmp_path / "slower.onnx", depth=48))
    x = np.random.default_rng(3).random((8192, 512), dtype=np.float32)  # 16 MB
    result = {}
    with ServerProcess("--model-repository", repo, "--threads", "1") as proc:
        def slow_call():
            c = httpclient.InferenceServerClient(proc.url, network_timeout=300)
            t0 = time.monotonic()
            try:
                result["y"] = c.infer("slow", [_input("x", x, True)]).as_numpy("y")
            except Exception as exc:  # noqa: BLE001
                result["error"] = repr(exc)
            result["seconds"] = time.monotonic() - t0

        t = threading.Thread(target=slow_call)
        t.start()
        deadline = time.monotonic() + 60
        while _metric(proc.url, 'edgedl_inference_in_flight{model="slow"}') < 1:  # wait until it is computing
            assert time.monotonic() < deadline and t.is_alive(), f"the request never became in-flight: {result}"
            time.sleep(0.005)
        proc.signal(signal.SIGTERM)
        t.join(300)
        code = proc.proc.wait(60)
    assert "error" not in result, result
    assert result["y"].shape == (8192, 512)
    assert code == 0
    assert "draining in-flight requests" in proc.stderr


def test_fast_batches_run_on_the_event_loop_and_slow_ones_on_a_worker_thread(zoo, built, tmp_path, reference):
    """A batched model whose full batch runs in under a millisecond at warm-up (the zoo CNN) runs its batches on
    the event loop (no thread hop); a slow one (~ms per row) on its worker thread, so the loop keeps reading
    requests meanwhile. Both gather concurrent requests into batches and answer each with its own rows."""
    batched = "max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 20000 }\n"
    repo = tmp_path / "repo"
    place(repo, "cnn", 1, zoo["cnn"].onnx, batched)
    place(repo, "slow", 1, built["slow"], batched)
    rng = np.random.default_rng(3)
    inputs = {"cnn": ("image", [rng.random((1, 1, 8, 8), dtype=np.float32) for _ in range(16)]),
              "slow": ("x", [rng.random((1, 512), dtype=np.float32) for _ in range(16)])}
    with ServerProcess("--model-repository", repo, "--threads", "1") as proc:
        ready = next(line for line in proc.stderr.splitlines() if "ready in" in line)
        assert "cnn v1 (batching up to 8 rows, 20000 us delay, inline)" in ready, ready
        assert "slow v1 (batching up to 8 rows, 20000 us delay)" in ready, ready
        for model, (name, xs) in inputs.items():
            path = repo / model / "1" / "model.onnx"
            start, errors = threading.Barrier(len(xs)), []

            def one(x):
                c = httpclient.InferenceServerClient(proc.url, network_timeout=120)
                try:
                    start.wait(30)
                    out = c.get_model_metadata(model)["outputs"][0]["name"]
                    got = c.infer(model, [_input(name, x, True)]).as_numpy(out)
                    want = next(iter(reference(path, {name: x}).values()))
                    if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                        errors.append(f"{model}: wrong rows")
                except Exception as exc:  # noqa: BLE001 - collected and reported below
                    errors.append(f"{model}: {exc}")
                finally:
                    c.close()

            _in_threads(one, xs, 120)
            assert not errors, errors
            stats = httpclient.InferenceServerClient(proc.url).get_inference_statistics(model)["model_stats"][0]
            assert stats["inference_count"] == 16 and stats["execution_count"] < 16, (model, stats["execution_count"])


@pytest.mark.parametrize("delay_us", [400, 2500])
def test_a_lone_request_waits_the_queue_delay_and_a_full_batch_does_not(zoo, tmp_path, delay_us):
    """max_queue_delay_microseconds as Triton keeps it: a request that does not fill a batch waits that long for
    company before it runs, sub-millisecond delays included (asyncio's timers under uvloop turned a 400 us delay
    into none); a request that fills the batch runs at once. Checked by the server's own queue times, which
    cannot come out shorter than the delay, however slow the machine."""
    repo = tmp_path / "repo"
    place(repo, "cnn", 1, zoo["cnn"].onnx, f"max_batch_size: 8\ndynamic_batching {{ max_queue_delay_microseconds: "
                                           f"{delay_us} }}\n")
    lone = np.random.default_rng(4).random((1, 1, 8, 8), dtype=np.float32)
    full = np.random.default_rng(5).random((8, 1, 8, 8), dtype=np.float32)
    with ServerProcess("--model-repository", repo, "--threads", "1") as proc:
        client = httpclient.InferenceServerClient(proc.url)
        n = 20
        for _ in range(n):
            client.infer("cnn", [_input("image", lone, True)])
        stats = client.get_inference_statistics("cnn")["model_stats"][0]
        queue = stats["inference_stats"]["queue"]
        assert queue["count"] == n and stats["execution_count"] == n
        waits_us = queue["ns"] / n / 1e3
        assert waits_us >= delay_us, f"a lone request waited {waits_us:.0f} us on average, less than the delay"
        before = queue["ns"]
        for _ in range(n):
            client.infer("cnn", [_input("image", full, True)])
        queue = client.get_inference_statistics("cnn")["model_stats"][0]["inference_stats"]["queue"]
        full_waits_us = (queue["ns"] - before) / n / 1e3
        assert full_waits_us < delay_us / 2, f"a full batch waited {full_waits_us:.0f} us on average"
        client.close()
