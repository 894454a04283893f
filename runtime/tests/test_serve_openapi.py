"""``GET /openapi.json``: a valid OpenAPI 3.1 description (openapi-spec-validator) of
exactly the routes the service has, whose schemas the service's own answers satisfy
(checked with jsonschema on real answers of both APIs, errors included)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from pyganx_runtime.serve import ServeConfig, create_app, load_models

validator = pytest.importorskip("openapi_spec_validator", reason="the runtime tests install openapi-spec-validator")
jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def served(models):
    cfg = ServeConfig(device="cpu")
    app = create_app(load_models(list(models.values()), cfg), cfg)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield app, c, c.get("/openapi.json").json()


def test_the_description_is_valid_openapi_3_1(served):
    _, _, spec = served
    assert spec["openapi"] == "3.1.0"
    validator.validate(spec)


def test_it_describes_exactly_the_routes_with_their_methods(served):
    app, _, spec = served
    routes = {r.path: {m.lower() for m in (r.methods or ())} - {"head"} for r in app.routes if isinstance(r, Route)}
    described = {path: set(ops) for path, ops in spec["paths"].items()}
    assert described == routes


def test_the_model_parameter_names_the_loaded_models(served, models):
    _, _, spec = served
    param = spec["paths"]["/v2/models/{model}/infer"]["post"]["parameters"][0]
    assert param["name"] == "model" and param["schema"]["enum"] == list(models)


def _check(spec: dict, r, path: str, method: str = "get") -> None:
    """The answer's JSON satisfies the schema the description gives for its status."""
    op = spec["paths"][path][method]
    assert str(r.status_code) in op["responses"], (path, r.status_code, r.text)
    schema = op["responses"][str(r.status_code)]["content"]["application/json"]["schema"]
    resolver = {"$defs": spec["components"]["schemas"], **schema}
    text = json.dumps(resolver).replace("#/components/schemas/", "#/$defs/")
    jsonschema.validate(r.json(), json.loads(text), cls=jsonschema.Draft202012Validator)


def test_the_answers_satisfy_the_description(served):
    _, c, spec = served
    _check(spec, c.get("/healthz"), "/healthz")
    _check(spec, c.get("/v1/models"), "/v1/models")
    _check(spec, c.get("/v2"), "/v2")
    _check(spec, c.get("/v2/health/live"), "/v2/health/live")
    _check(spec, c.get("/v2/health/ready"), "/v2/health/ready")
    _check(spec, c.get("/v2/models/faces"), "/v2/models/{model}")
    _check(spec, c.get("/v2/models/faces/versions/1/ready"), "/v2/models/{model}/versions/{version}/ready")
    _check(spec, c.get("/v2/models/nope"), "/v2/models/{model}")
    x = np.zeros((1, 1, 8, 8), np.float32)
    ok = c.post("/v2/models/digits/infer", json={"inputs": [{"name": "image", "datatype": "FP32",
                                                             "shape": [1, 1, 8, 8], "data": x.ravel().tolist()}]})
    _check(spec, ok, "/v2/models/{model}/infer", "post")
    _check(spec, c.post("/v2/models/digits/infer", content=b"{}"), "/v2/models/{model}/infer", "post")
    _check(spec, c.post("/v1/translate/digits", content=b"x", headers={"content-type": "text/plain"}),
           "/v1/translate/{model}", "post")
