"""serve's Open Inference Protocol ("v2") endpoints, driven by Triton's own HTTP client
(``tritonclient.http``): its request encoder and response parser in-process, and the
client itself against the real server (uvicorn in a subprocess). The reference for every
output is the onnxruntime ``Translator`` on the same model and the same arrays; the
reference for the metadata is the model's onnxruntime session."""
from __future__ import annotations

import gzip
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_support import assert_error, serve_client

from pyganx_runtime import Translator
from pyganx_runtime.serve.process import start_server, stop_server

th = pytest.importorskip("tritonclient.http", reason="the runtime tests install tritonclient[http]")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException
V2_TYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(uint8)": "UINT8"}



@pytest.fixture(scope="module")
def client(models):
    with serve_client(models) as c:
        yield c


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, c, h, w)).astype(np.float32)


def _inputs(x: np.ndarray, domains=None, binary: bool = True) -> list:
    image = th.InferInput("image", list(x.shape), "FP32")
    image.set_data_from_numpy(x, binary_data=binary)
    if domains is None:
        return [image]
    d = th.InferInput("domain", [len(domains)], "INT64")
    d.set_data_from_numpy(np.asarray(domains, dtype=np.int64), binary_data=binary)
    return [image, d]


def _infer(client, model: str, inputs: list, binary_out: bool = True, **headers):
    """A request as tritonclient encodes it, posted in-process; the raw response."""
    outputs = [th.InferRequestedOutput("output", binary_data=binary_out)]
    body, json_size = th.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return client.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def _output(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    length = r.headers.get("inference-header-content-length")
    result = th.InferenceServerClient.parse_response_body(r.content, header_length=length and int(length))
    return result.as_numpy("output")




def test_server_health_and_metadata(client):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2").json()
    assert meta["name"] == "pyganx-runtime" and "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("name", ["digits", "faces", "noise"])
def test_model_metadata_gives_the_sessions_tensors_with_minus_one_for_dynamic_dims(client, models, name):
    import onnxruntime as ort
    session = ort.InferenceSession(str(models[name]), providers=["CPUExecutionProvider"])

    def expected(args):
        return [{"name": a.name, "datatype": V2_TYPES[a.type],
                 "shape": [d if isinstance(d, int) else -1 for d in a.shape]} for a in args]
    for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/1"):
        meta = client.get(path).json()
        assert meta["name"] == name and meta["versions"] == ["1"]
        assert meta["inputs"] == expected(session.get_inputs())
        assert meta["outputs"] == expected(session.get_outputs())
    ready = client.get(f"/v2/models/{name}/ready")
    assert ready.status_code == (400 if name == "noise" else 200)     # a noise model translates nothing


@pytest.mark.parametrize("binary", [True, False])
def test_infer_equals_the_translator_in_binary_and_in_json(client, models, binary):
    x = _images(2, 1, 33, 40)          # off the size multiple: padded and cropped back, as the Translator does
    y = _output(_infer(client, "digits", _inputs(x, binary=binary), binary_out=binary))
    np.testing.assert_array_equal(y, Translator(models["digits"], device="cpu")(x))
    faces = _images(3, 3, 32, 24, seed=1)
    y = _output(_infer(client, "faces", _inputs(faces, [2, 0, 1], binary=binary), binary_out=binary))
    np.testing.assert_array_equal(y, Translator(models["faces"], device="cpu")(faces, [2, 0, 1]))


def test_a_json_request_with_nested_data_and_no_outputs_named(client, models):
    x = _images(1, 1, 32, 32, seed=2)
    body = {"id": "r1", "inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape),
                                    "data": x.tolist()}]}
    r = client.post("/v2/models/digits/versions/1/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["id"] == "r1" and doc["model_name"] == "digits" and doc["model_version"] == "1"
    (out,) = doc["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32" and out["shape"] == list(x.shape)
    want = Translator(models["digits"], device="cpu")(x)
    np.testing.assert_array_equal(np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]), want)


def test_a_gzip_body_is_read(client, models):
    x = _images(1, 1, 32, 32, seed=3)
    body, json_size = th.InferenceServerClient.generate_request_body(_inputs(x))
    r = client.post("/v2/models/digits/infer", content=gzip.compress(body),
                    headers={"Inference-Header-Content-Length": str(json_size), "Content-Encoding": "gzip"})
    np.testing.assert_array_equal(_output(r), Translator(models["digits"], device="cpu")(x))


def _raw(client, body: bytes, json_size: int | None = None, model: str = "digits"):
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    return client.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def _request(x: np.ndarray, datatype: str = "FP32", shape=None, name: str = "image") -> tuple[bytes, int]:
    head = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": list(shape or x.shape),
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return head + x.tobytes(), len(head)


def test_every_bad_request_is_the_protocols_json_error_and_the_service_goes_on(models):
    x = _images(1, 1, 32, 32)
    body, n = _request(x)
    with serve_client(models, max_upload_bytes=64 * 1024, max_pixels=64 * 64) as c:
        assert_error(_raw(c, *_request(x.astype(np.float64), "FP64")), 400, "datatype 'FP64'", "takes FP32")
        assert_error(_raw(c, *_request(x, shape=[1, 1, 32, 16])), 400, "binary_data_size is 4096 bytes", "takes 2048")
        assert_error(_raw(c, *_request(x.reshape(1, 32, 32), shape=[1, 32, 32])), 400, "shape [1, 32, 32]",
               "[-1, 1, -1, -1]")
        assert_error(_raw(c, *_request(x, name="picture")), 400, "unknown input 'picture'")
        assert_error(_raw(c, *_request(_images(1, 3, 32, 32)), model="faces"), 400, "missing input 'domain'")
        assert_error(_raw(c, body, n + 7), 400, "not JSON")                     # header length too long
        assert_error(_raw(c, body, len(body) + 1), 400, "Inference-Header-Content-Length says")
        assert_error(_raw(c, body[:-4], n), 400, "runs past the end")          # body shorter than the sizes say
        assert_error(_raw(c, body + b"\0" * 8, n), 400, "add up to")           # longer
        assert_error(_raw(c, body, None), 400, "not JSON")                      # binary without the header
        assert_error(_raw(c, b"{}", None), 400, "no inputs")
        assert_error(_raw(c, body, n, model="nope"), 404, "unknown model 'nope'")
        assert_error(c.get("/v2/models/digits/versions/2"), 404, "no version '2'")
        assert_error(_raw(c, *_request(_images(1, 1, 128, 128))), 413, "larger than the limit")
        assert_error(_raw(c, *_request(_images(1, 1, 100, 64)[:, :, :, :50])), 413, "more than the limit")
        assert_error(_raw(c, body, n, model="noise"), 400, "noise model")
        assert_error(_infer(c, "faces", _inputs(_images(2, 3, 16, 16), [0, 7])), 400, "7 is no domain index")
        assert_error(_infer(c, "faces", _inputs(_images(2, 3, 16, 16), [0])), 400, "1 target domains for 2 images")
        assert_error(_infer(c, "digits", _inputs(_images(9, 1, 16, 16))), 400, "1 to 8 images")
        assert_error(c.post("/v2/models/digits/infer", content=b"\x1f\x8b junk", headers={"Content-Encoding": "gzip"}),
               400, "not valid gzip")
        assert_error(c.post("/v2/models/digits/infer", content=gzip.compress(b" " * 70_000),
                      headers={"Content-Encoding": "gzip"}), 413, "decompressed body")
        assert _output(_raw(c, body, n)).shape == x.shape                  # and it goes on


def _json_request(client, inputs: list[dict], model: str = "digits", **extra):
    return client.post(f"/v2/models/{model}/infer", content=json.dumps({"inputs": inputs, **extra}).encode())


def test_malformed_requests_are_400s_never_500s(models):
    x = _images(1, 1, 8, 8)
    image = {"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": x.ravel().tolist()}
    body, n = _request(x)
    with serve_client(models) as c:
        assert_error(_json_request(c, [{**image, "name": []}]), 400, "unknown input")
        assert_error(c.post("/v2/models/digits/infer", content=b"[" * 100_000), 400, "not JSON")
        for length in ("\u00b2", "9" * 5000, "-1"):      # a superscript two passes str.isdigit()
            assert_error(c.post("/v2/models/digits/infer", content=body,
                          headers={"Inference-Header-Content-Length": length.encode("latin-1")}),
                   400, "must be a byte count")
        assert_error(_json_request(c, [{**image, "shape": [1, 1, 0, 2**62], "data": []}]), 400, "shape must be")
        assert_error(_json_request(c, [{**image, "shape": [1, 1, 2**30, 2**30], "data": []}]), 400, "more than")
        nan = json.dumps({"inputs": [image]}).replace(str(image["data"][0]), "NaN", 1).encode()
        assert_error(c.post("/v2/models/digits/infer", content=nan), 400, "not JSON")
        assert_error(_json_request(c, [{**image, "data": ["0.5"] * 64}]), 400, "list of FP32 values")
        faces = {"name": "image", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0.0] * 192}
        assert_error(_json_request(c, [faces, {"name": "domain", "datatype": "INT64", "shape": [1], "data": [1.5]}],
                             model="faces"), 400, "list of INT64 values")
        assert_error(c.post("/v2/models/digits/infer", content=gzip.compress(body)[:-8],
                      headers={"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(n)}),
               400, "cut off")
        assert _json_request(c, [image], outputs=[]).json()["outputs"][0]["name"] == "output"   # [] asks for all


def test_json_is_held_to_a_quarter_of_the_upload_limit(models):
    with serve_client(models, max_upload_bytes=256 * 1024) as c:         # JSON: 64 KiB
        x = _images(1, 1, 80, 80)       # about 120 KiB as JSON, 25 KiB as binary data
        assert_error(_infer(c, "digits", _inputs(x, binary=False)), 413, "JSON part", "send the tensors as binary data")
        x = _images(1, 1, 130, 130)     # 16900 elements: 66 KiB at 4 bytes each
        assert_error(_infer(c, "digits", _inputs(x), binary_out=False), 413, "too large to answer as JSON")
        assert _output(_infer(c, "digits", _inputs(x))).shape == x.shape       # binary both ways fits


def test_a_domain_sent_as_n_by_1_as_for_tritons_repository_config(client, models):
    x = _images(2, 3, 16, 16, seed=4)
    image = th.InferInput("image", list(x.shape), "FP32")
    image.set_data_from_numpy(x)
    domain = th.InferInput("domain", [2, 1], "INT64")
    domain.set_data_from_numpy(np.array([[2], [1]], dtype=np.int64))
    y = _output(_infer(client, "faces", [image, domain]))
    np.testing.assert_array_equal(y, Translator(models["faces"], device="cpu")(x, [2, 1]))


def test_a_batch_holds_at_most_max_batch_images_whatever_each_request_holds(models):
    xs = [_images(2, 1, 16, 16, seed=i) for i in range(5)]
    with serve_client(models, max_batch=4, max_wait_ms=300) as c:
        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda x: _infer(c, "digits", _inputs(x)), xs))
        metrics = c.get("/metrics").text
    sizes = [int(r.headers["x-batch-size"]) for r in answers]
    assert max(sizes) == 4 and all(s in (2, 4) for s in sizes), sizes
    tr = Translator(models["digits"], device="cpu")
    for x, r in zip(xs, answers):
        np.testing.assert_allclose(_output(r), tr(x), rtol=0, atol=1e-5)
    batch = {s.name: s.value for f in text_string_to_metric_families(metrics) if f.name == "pyganx_batch_size"
             for s in f.samples if s.labels["model"] == "digits" and not s.name.endswith("_bucket")}
    assert batch["pyganx_batch_size_sum"] == 10        # images, not requests


def test_the_token_guards_v2_except_the_health_probes(models):
    x = _images(1, 1, 32, 32)
    with serve_client(models, token="s3cret") as c:
        assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").status_code == 200
        for r in (c.get("/v2"), c.get("/v2/models/digits"), _raw(c, *_request(x))):
            assert_error(r, 401, "token")
        assert _output(_infer(c, "digits", _inputs(x), Authorization="Bearer s3cret")).shape == x.shape


def test_concurrent_requests_share_batches_with_each_other_and_the_metrics_count_them(models):
    xs = [_images(1, 1, 32, 32, seed=i) for i in range(6)]
    with serve_client(models, max_wait_ms=200) as c:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda x: _infer(c, "digits", _inputs(x)), xs))
        _raw(c, b"junk")
        metrics = c.get("/metrics").text
    tr = Translator(models["digits"], device="cpu")
    for x, r in zip(xs, answers):
        np.testing.assert_allclose(_output(r), tr(x), rtol=0, atol=1e-5)   # another batch size may round otherwise
    assert max(int(r.headers["x-batch-size"]) for r in answers) > 1
    fam = {f.name: f for f in text_string_to_metric_families(metrics)}
    counts = {(s.labels["model"], s.labels["code"]): s.value for s in fam["pyganx_requests"].samples
              if s.name.endswith("_total")}
    assert counts == {("digits", "200"): 6, ("digits", "400"): 1}


def test_a_full_queue_answers_503_with_retry_after(models):
    gate, running = threading.Event(), threading.Event()
    with serve_client(models, max_batch=1, max_queue=1, max_wait_ms=0) as c:
        batcher = c.app.state.models["digits"].batcher
        run = batcher.run_batch

        def held(key, payloads):
            running.set()
            assert gate.wait(30)
            return run(key, payloads)
        batcher.run_batch = held
        xs = [_images(1, 1, 32, 32, seed=i) for i in range(3)]
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(_infer, c, "digits", _inputs(xs[0]))
            assert running.wait(30)
            queued = pool.submit(_infer, c, "digits", _inputs(xs[1]))
            deadline = time.monotonic() + 30
            while batcher.queued() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = _infer(c, "digits", _inputs(xs[2]))
            gate.set()
            done = [first.result(30), queued.result(30)]
    assert_error(refused, 503, "try again")
    assert refused.headers["retry-after"] == "1"
    assert [r.status_code for r in done] == [200, 200]


@pytest.fixture(scope="module")
def server(models):
    try:
        proc, url = start_server([models["digits"], models["faces"]], "--device", "cpu", "--log-level", "warning",
                                 timeout=60)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield url.split("//", 1)[1].rstrip("/")
    out = stop_server(proc)
    assert "Traceback" not in out, out


def test_tritons_client_against_the_real_server(server, models):
    client = th.InferenceServerClient(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("faces")
    meta = client.get_model_metadata("faces")
    assert [t["name"] for t in meta["inputs"]] == ["image", "domain"]
    x = _images(2, 3, 40, 40, seed=5)
    want = Translator(models["faces"], device="cpu")(x, [1, 2])
    for binary in (True, False):
        result = client.infer("faces", _inputs(x, [1, 2], binary=binary),
                              outputs=[th.InferRequestedOutput("output", binary_data=binary)])
        np.testing.assert_array_equal(result.as_numpy("output"), want)
    result = client.infer("digits", _inputs(_images(1, 1, 32, 32)))    # no outputs named: binary, as the client asks
    assert result.as_numpy("output").shape == (1, 1, 32, 32)


def test_errors_as_tritons_client_surfaces_them(server):
    client = th.InferenceServerClient(server)
    cases = [(lambda: client.infer("nope", _inputs(_images(1, 1, 32, 32))), "404", "unknown model 'nope'"),
             (lambda: client.infer("faces", _inputs(_images(1, 3, 32, 32))), "400", "missing input 'domain'"),
             (lambda: client.infer("digits", _inputs(_images(1, 3, 32, 32))), "400", "the model takes [-1, 1, -1, -1]"),
             (lambda: client.get_model_metadata("nope"), "404", "unknown model")]
    for call, status, words in cases:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == status and words in e.value.message(), (status, words, str(e.value))
    assert not client.is_model_ready("nope")
