"""`pyganx-runtime serve` (= `pyganx serve`): every endpoint, every bad input, the token,
micro-batching and the bounded queue, through an in-process client; then the real thing
(uvicorn in a subprocess) driven by headless Chromium. The reference for every translated
image is the onnxruntime ``Translator`` on the same model, one image at a time. Runs
without torch (the models come from conftest.py)."""
from __future__ import annotations

import io
import os
import shutil
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from serve_support import assert_error, serve_client

from pyganx_runtime import Translator
from pyganx_runtime.cli import main as cli_main
from pyganx_runtime.serve.process import start_server, stop_server

# --- models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(models):
    with serve_client(models) as c:
        yield c


def _image(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth content, so that JPEG round trips stay close
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(x / (3 + seed % 5) + seed) * np.cos(y / 4)
    arr = np.clip(base[..., None] + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode)


def _bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _post(client, model: str, data: bytes, query: str = "", raw_type: str | None = None, **headers):
    url = f"/v1/translate/{model}{query}"
    if raw_type:
        return client.post(url, content=data, headers={"content-type": raw_type, **headers})
    return client.post(url, files={"image": ("x.png", data, "image/png")}, headers=headers)


def _pixels(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)), dtype=np.int16)


def _assert_same(content: bytes, ref: Image.Image, tol: int = 1) -> None:
    """Equal to the reference translation up to one grey level (a batch of several runs
    the convolutions with another batch size, which may round differently)."""
    got, want = _pixels(content), np.asarray(ref, dtype=np.int16)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= tol




# --- endpoints ------------------------------------------------------------------------------

def test_models_health_and_page(client, models):
    assert client.get("/healthz").json() == {"status": "ok", "models": 3}
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(listed) == {"digits", "faces", "noise"}
    assert listed["digits"]["inputs"] == ["image"] and listed["digits"]["domains"] == []
    assert listed["digits"]["channels"] == 1 and listed["digits"]["image_size"] == 32
    assert listed["faces"]["inputs"] == ["image", "domain"]
    assert listed["faces"]["domains"] == ["happy", "sad", "angry"] and listed["faces"]["channels"] == 3
    assert listed["noise"]["translates"] is False and "z" in listed["noise"]["inputs"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("static/app.js", "static/style.css"):
        assert asset in page.text
        assert client.get("/" + asset).status_code == 200
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert "://" not in text          # nothing from the network: works offline


def test_translations_equal_the_translator_in_every_format(client, models):
    tr = Translator(models["digits"], device="cpu")
    img = _image(32, 32, seed=1)
    ref = tr.translate(img.convert("L"))
    r = _post(client, "digits", _bytes(img))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    _assert_same(r.content, ref, tol=0)
    r = _post(client, "digits", _bytes(img), raw_type="image/png")          # the raw body
    _assert_same(r.content, ref, tol=0)
    for fmt, media in (("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        # the upload in this format, the answer in the format Accept asks for
        r = _post(client, "digits", _bytes(img, fmt), raw_type=media, accept=f"{media}, image/png;q=0.5")
        assert r.status_code == 200 and r.headers["content-type"] == media
        assert Image.open(io.BytesIO(r.content)).format == fmt
        decoded = load_pil(_bytes(img, fmt)).convert("L")
        got = np.asarray(Image.open(io.BytesIO(r.content)).convert("L"), dtype=np.int16)   # WebP has no grey
        assert np.abs(got - np.asarray(tr.translate(decoded), dtype=np.int16)).mean() < 3   # lossy out
    r = _post(client, "digits", _bytes(img), accept="text/html,*/*")
    assert r.headers["content-type"] == "image/png"


def load_pil(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_stargan_takes_the_target_domain_as_a_parameter(client, models):
    tr = Translator(models["faces"], device="cpu")
    img = _image(32, 32, seed=2)
    outs = {}
    for d in ("happy", "angry"):
        r = _post(client, "faces", _bytes(img), f"?domain={d}")
        _assert_same(r.content, tr.translate(img, d), tol=0)
        outs[d] = _pixels(r.content)
    assert np.abs(outs["happy"] - outs["angry"]).max() > 0
    assert_error(_post(client, "faces", _bytes(img)), 400, "needs a target domain", "?domain=", "happy, sad, angry")
    assert_error(_post(client, "faces", _bytes(img), "?domain=bored"), 400, "unknown domain 'bored'")
    assert_error(_post(client, "digits", _bytes(img), "?domain=sad"), 400, "takes no")


def test_sizes_off_the_multiple_are_padded_and_cropped_back(client, models):
    tr = Translator(models["digits"], device="cpu")
    assert tr.multiple > 1
    img = _image(37, 23, seed=3, mode="L")
    r = _post(client, "digits", _bytes(img))
    assert Image.open(io.BytesIO(r.content)).size == (37, 23)
    _assert_same(r.content, tr.translate(img), tol=0)


def test_images_larger_than_the_tile_go_through_the_tiled_path(models):
    tiled = Translator(models["digits"], device="cpu", tile=48, overlap=16)
    plain = Translator(models["digits"], device="cpu")
    img = _image(130, 70, seed=4, mode="L")
    tiled.translate(_image(48, 40, seed=4, mode="L"))
    assert tiled.tiler._built is None       # the tiled graphs wait for the first image larger than a tile
    with serve_client(models, tile=48, overlap=16) as c:
        assert {m["name"]: m["tile"] for m in c.get("/v1/models").json()["models"]}["digits"] == 48
        r = _post(c, "digits", _bytes(img))
    _assert_same(r.content, tiled.translate(img), tol=0)
    assert tiled.tiler._built is not None
    assert Image.open(io.BytesIO(r.content)).size == (130, 70)
    # tiling was used: the result is the tiled one, not the whole-image run (close to it)
    whole = np.asarray(plain.translate(img), dtype=np.int16)
    assert not np.array_equal(_pixels(r.content), whole) and np.abs(_pixels(r.content) - whole).mean() < 8


# --- bad input ------------------------------------------------------------------------------

def test_bad_input_is_a_json_error_and_the_service_goes_on(models):
    png = _bytes(_image(32, 32))
    big = _bytes(Image.new("L", (1200, 1000), 128))      # small file, many pixels
    with serve_client(models, max_upload_bytes=len(png) * 3, max_pixels=1_000_000) as c:
        assert_error(_post(c, "digits", b"this is text, not a picture"), 400, "not an image")
        assert_error(_post(c, "digits", png[: len(png) // 2]), 400, "corrupt PNG")
        assert_error(_post(c, "digits", b""), 400, "empty")
        assert_error(_post(c, "digits", _bytes(_image(8, 8), "GIF")), 415, "GIF")
        assert_error(_post(c, "digits", _bytes(_image(8, 8), "BMP"), raw_type="image/png"), 415, "BMP")
        assert_error(_post(c, "digits", png, raw_type="text/plain"), 415, "text/plain")
        assert_error(_post(c, "digits", png * 4, raw_type="image/png"), 413, "larger than the limit")
        assert_error(_post(c, "digits", png * 4), 413, "larger than the limit")            # as a form, too
        assert_error(_post(c, "digits", big), 413, "1200x1000", "1000000")
        assert_error(_post(c, "nope", png), 404, "no model named 'nope'")
        assert_error(_post(c, "noise", png), 400, "noise model")
        assert_error(c.post("/v1/translate/digits", files={"picture": ("x.png", png, "image/png")}), 400, "'image'")
        assert_error(c.post("/v1/translate/digits", content=b"--x\r\nbroken",
                      headers={"content-type": "multipart/form-data; boundary=x"}), 400)
        assert_error(c.get("/v1/translate/digits"), 405)
        assert_error(c.get("/v2/anything"), 404)
        # a decompression bomb: a tiny PNG header that claims 100000 x 100000 pixels
        bomb = _bytes(Image.new("1", (1, 1)))
        ihdr = b"IHDR" + (100000).to_bytes(4, "big") * 2 + bomb[24:29]
        bomb = bomb[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + bomb[33:]
        assert_error(_post(c, "digits", bomb), 413, "pixels")
        assert _post(c, "digits", png).status_code == 200          # still serving
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    errors = {(s.labels["model"], s.labels["code"]): s.value for s in families["pyganx_request_errors"].samples
              if s.name.endswith("_total")}
    assert errors[("digits", "413")] == 4 and errors[("digits", "415")] == 3 and errors[("-", "404")] == 1
    assert errors[("noise", "400")] == 1


def test_the_token_guards_the_api_and_the_metrics(models):
    png = _bytes(_image(32, 32))
    with serve_client(models, token="s3cret") as c:
        for path in ("/v1/models", "/metrics"):
            r = c.get(path)
            assert_error(r, 401, "Authorization: Bearer")
            assert r.headers["www-authenticate"] == "Bearer"
            assert_error(c.get(path, headers={"authorization": "Bearer wrong"}), 401)
            assert c.get(path, headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert_error(_post(c, "digits", png), 401)
        assert_error(_post(c, "nope", png), 401)                 # no probing for model names without it
        assert _post(c, "digits", png, authorization="Bearer s3cret").status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
    with serve_client(models) as c:                             # off: no header needed
        assert c.get("/v1/models").status_code == 200


# --- batching and the queue ------------------------------------------------------------------

def test_concurrent_requests_are_batched_and_each_gets_its_own_result(models):
    digits = Translator(models["digits"], device="cpu")
    faces = Translator(models["faces"], device="cpu")
    jobs = [("digits", _image(32, 32, seed=i, mode="L"), "") for i in range(6)]
    jobs += [("digits", _image(40, 24, seed=10 + i, mode="L"), "") for i in range(3)]     # another size
    jobs += [("faces", _image(32, 32, seed=20 + i), f"?domain={d}") for i, d in enumerate(["sad", "angry", "happy"])]
    with serve_client(models, max_batch=4, max_wait_ms=400) as c:
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda j: _post(c, j[0], _bytes(j[1]), j[2]), jobs))
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    for (name, img, query), r in zip(jobs, answers):
        assert r.status_code == 200
        ref = digits.translate(img) if name == "digits" else faces.translate(img, query.split("=")[1])
        _assert_same(r.content, ref)
    sizes = [int(r.headers["x-batch-size"]) for r in answers]
    assert max(sizes) > 1 and max(sizes) <= 4
    # a batch holds one model and one image size: no 32x32 digit shares a batch with a 40x24 one
    assert all(s <= 3 for s in sizes[6:9])
    batches = {s.labels["model"]: s.value for s in families["pyganx_batch_size"].samples if s.name.endswith("_count")}
    sums = {s.labels["model"]: s.value for s in families["pyganx_batch_size"].samples if s.name.endswith("_sum")}
    assert sums == {"digits": 9, "faces": 3, "noise": 0}
    assert batches["digits"] < 9 and batches["faces"] < 3


def test_a_full_queue_answers_503_with_retry_after_and_loses_nothing(models):
    gate = threading.Event()
    with serve_client(models, max_batch=1, max_queue=2, max_wait_ms=0) as c:
        batcher = c.app.state.models["digits"].batcher
        run = batcher.run_batch
        running = threading.Event()

        def held(key, payloads):
            running.set()
            assert gate.wait(30)
            return run(key, payloads)
        batcher.run_batch = held
        png = [_bytes(_image(32, 32, seed=i)) for i in range(4)]
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(_post, c, "digits", png[0])
            assert running.wait(30)                                  # one runs, held
            queued = [pool.submit(_post, c, "digits", p) for p in png[1:3]]
            deadline = time.monotonic() + 30
            while batcher.queued() < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            depth = [s.value for f in text_string_to_metric_families(c.get("/metrics").text)
                     if f.name == "pyganx_queue_depth" for s in f.samples if s.labels["model"] == "digits"]
            refused = _post(c, "digits", png[3])
            gate.set()
            results = [first.result(30)] + [q.result(30) for q in queued]
    assert_error(refused, 503, "try again")
    assert refused.headers["retry-after"] == "1" and depth == [2.0]
    assert [r.status_code for r in results] == [200, 200, 200]
    tr = Translator(models["digits"], device="cpu")
    for data, r in zip(png, results):
        _assert_same(r.content, tr.translate(load_pil(data).convert("L")), tol=0)


def test_metrics_are_prometheus_text_with_the_counts_sent(models):
    png = _bytes(_image(32, 32))
    with serve_client(models) as c:
        for _ in range(3):
            assert _post(c, "digits", png).status_code == 200
        _post(c, "digits", b"junk")
        r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    fam = {f.name: f for f in text_string_to_metric_families(r.text)}
    req = {(s.labels["model"], s.labels["code"]): s.value for s in fam["pyganx_requests"].samples
           if s.name.endswith("_total")}
    assert req == {("digits", "200"): 3, ("digits", "400"): 1}
    count = [s.value for s in fam["pyganx_request_latency_seconds"].samples
             if s.name.endswith("_count") and s.labels["model"] == "digits"]
    assert count == [4]
    assert {s.labels["model"] for s in fam["pyganx_queue_depth"].samples} == {"digits", "faces", "noise"}


def test_serve_cli_errors_are_one_line(models, tmp_path, capsys):
    assert cli_main(["serve", str(tmp_path / "missing.onnx")]) == 1
    err = capsys.readouterr().err
    assert "missing.onnx: no such model" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "digits.onnx"
    shutil.copy(models["digits"], other)
    assert cli_main(["serve", str(models["digits"]), str(other)]) == 1
    assert "two models are named 'digits'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["serve", str(other), "--max-batch", "x"])
    assert e.value.code == 2


# --- the real service in a real browser -----------------------------------------------------

@pytest.fixture(scope="module")
def server(models):
    """``pyganx-runtime serve`` as a user starts it, on a free loopback port."""
    try:
        proc, url = start_server([models["digits"], models["faces"], models["noise"]], "--device", "cpu",
                                 "--log-level", "warning", timeout=60)
    except RuntimeError as e:
        pytest.fail(str(e))
    yield url
    out = stop_server(proc)
    assert "Traceback" not in out, out


def test_the_uvicorn_server_answers_over_http(server, models):
    import httpx
    img = _image(32, 32, seed=5)
    r = httpx.post(server + "/v1/translate/faces?domain=sad", files={"image": ("a.png", _bytes(img), "image/png")})
    assert r.status_code == 200
    _assert_same(r.content, Translator(models["faces"], device="cpu").translate(img, "sad"), tol=0)
    assert httpx.get(server + "/v1/translate/faces").status_code == 405


def _browser():
    """Headless Chromium through chromedriver (Debian's chromium and chromium-driver;
    `make test` installs them). Missing, it is a failure, not a skip, unless
    PYGANX_SKIP_BROWSER=1 says so explicitly."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("PYGANX_SKIP_BROWSER") == "1":
            pytest.skip("PYGANX_SKIP_BROWSER=1 and no chromium/chromedriver")
        pytest.fail("the browser test needs chromium and chromedriver (apt-get install chromium chromium-driver; "
                    "`make test` does it), or PYGANX_SKIP_BROWSER=1")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1100,820", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _wait(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"the page did not show {what} within {timeout} s")


def test_the_web_page_translates_an_upload_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    src = tmp_path / "portrait.png"
    _image(40, 24, seed=6).save(src)
    browser = _browser()
    try:
        browser.get(server + "/")
        _wait(lambda: "3 models" in browser.find_element(By.ID, "status").text, "the model list")
        model = Select(browser.find_element(By.ID, "model"))
        assert [o.text for o in model.options] == ["digits", "faces", "noise (noise model)"]
        assert not browser.find_element(By.ID, "domain-row").is_displayed()      # digits: no domains
        assert not browser.find_element(By.ID, "token-row").is_displayed()       # no --token
        model.select_by_value("faces")
        assert browser.find_element(By.ID, "domain-row").is_displayed()
        Select(browser.find_element(By.ID, "domain")).select_by_value("angry")
        browser.find_element(By.ID, "file").send_keys(str(src))
        size = _wait(lambda: browser.execute_script(
            "const i = document.getElementById('output-img');"
            "return i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null"), "the translation")
        assert size == [40, 24]
        link = browser.find_element(By.ID, "download")
        assert link.is_displayed() and link.get_attribute("download") == "portrait-faces-angry.png"
        shot = Path(os.environ.get("PYGANX_SCREENSHOT") or tmp_path / "serve.png")
        browser.save_screenshot(str(shot))
        assert Image.open(shot).size[0] > 0
        # an API error reaches the person: a file that is not an image
        bad = tmp_path / "notes.png"
        bad.write_text("not a picture")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        message = _wait(lambda: browser.find_element(By.ID, "error").text, "the error")
        assert "not an image" in message and "400" in message
    finally:
        browser.quit()
