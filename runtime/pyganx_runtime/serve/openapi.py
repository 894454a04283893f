"""The OpenAPI 3.1 description of the service, served at ``GET /openapi.json``: the
service's own API (``/v1``, health, metrics) and the Open Inference Protocol (``/v2``),
with the loaded models' names as the ``model`` parameter's values. Schemas are JSON
Schema 2020-12, as OpenAPI 3.1 has them; tests/test_serve_openapi.py validates the
description and checks the service's answers against it."""
from __future__ import annotations

from typing import Any

from .._version import __version__

_JSON = "application/json"
_ERROR = {"$ref": "#/components/schemas/Error"}
_ERRORS = {
    "400": "a bad request: the message says what",
    "401": "missing or wrong token (when serve runs with --token)",
    "404": "no such model (or version)",
    "413": "the upload, or an image's pixels, over the limit",
    "415": "an unsupported content type or encoding",
    "503": "the model's queue is full: try again after Retry-After seconds",
}
_TENSOR_SHAPE = {"type": "array", "items": {"type": "integer"}}
_DATATYPES = ["BOOL", "UINT8", "UINT16", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Health": {"type": "object", "required": ["status"],
               "properties": {"status": {"enum": ["ok", "starting"]}, "models": {"type": "integer"}}},
    "ModelEntry": {"type": "object", "required": ["name", "inputs", "translates"], "properties": {
        "name": {"type": "string"}, "inputs": {"type": "array", "items": {"type": "string"}},
        "domains": {"type": "array", "items": {"type": "string"}},
        "image_size": {"type": ["integer", "null"]}, "plugin": {"type": ["string", "null"]},
        "generator": {"type": ["string", "null"]}, "translates": {"type": "boolean"},
        "channels": {"type": ["integer", "null"]}, "size_multiple": {"type": ["integer", "null"]},
        "tile": {"type": ["integer", "null"]}, "providers": {"type": "array", "items": {"type": "string"}}}},
    "ModelList": {"type": "object", "required": ["models"],
                  "properties": {"models": {"type": "array", "items": {"$ref": "#/components/schemas/ModelEntry"}}}},
    "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}}}},
    "TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"enum": _DATATYPES},
        "shape": {**_TENSOR_SHAPE, "description": "-1: any size"}}},
    "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                      "properties": {
                          "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                          "platform": {"type": "string"},
                          "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
                          "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}}}},
    "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}, "name": {"type": "string"}}},
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Parameters": {"type": "object", "properties": {
        "binary_data_size": {"type": "integer", "minimum": 0,
                             "description": "the tensor's bytes in the binary part of the body"},
        "binary_data": {"type": "boolean", "description": "an output: answer it as binary data"},
        "binary_data_output": {"type": "boolean", "description": "the request: answer every output as binary"}},
        "additionalProperties": True},
    "RequestInput": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"enum": _DATATYPES}, "shape": _TENSOR_SHAPE,
        "parameters": {"$ref": "#/components/schemas/Parameters"},
        "data": {"type": "array", "description": "the elements, row-major, flat or nested"}}},
    "RequestOutput": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": {"$ref": "#/components/schemas/Parameters"}}},
    "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"$ref": "#/components/schemas/Parameters"},
        "inputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/RequestInput"}},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/RequestOutput"}}}},
    "ResponseOutput": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"enum": _DATATYPES}, "shape": _TENSOR_SHAPE,
        "parameters": {"$ref": "#/components/schemas/Parameters"}, "data": {"type": "array"}}},
    "InferenceResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/ResponseOutput"}}}},
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _op(summary: str, ok: dict[str, Any], errors: tuple[str, ...] = (), secured: bool = True,
        **more: Any) -> dict[str, Any]:
    responses = {"200": ok, **{code: {"description": _ERRORS[code], "content": {_JSON: {"schema": _ERROR}}}
                               for code in errors}}
    op: dict[str, Any] = {"summary": summary, "responses": responses, **more}
    if not secured:
        op["security"] = []
    return op


def _v1(model: dict[str, Any]) -> dict[str, Any]:
    image = {"type": "string", "format": "binary"}
    upload = {"content": {"multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                                             "properties": {"image": image}}},
                          **{t: {"schema": image} for t in ("image/png", "image/jpeg", "image/webp")}},
              "required": True}
    translated = {"description": "the translated image (PNG unless Accept names JPEG or WebP)",
                  "headers": {"X-Batch-Size": {"schema": {"type": "integer"},
                                               "description": "images in the model run that translated it"}},
                  "content": {t: {"schema": image} for t in ("image/png", "image/jpeg", "image/webp")}}
    domain = {"name": "domain", "in": "query", "schema": {"type": "string"},
              "description": "the target domain, for models that take one (StarGAN)"}
    return {
        "/": {"get": _op("the web page", {"description": "HTML", "content": {"text/html": {}}}, secured=False)},
        "/healthz": {"get": _op("health", _json("Health", "ready"), secured=False)},
        "/metrics": {"get": _op("Prometheus metrics", {"description": "Prometheus text format",
                                                       "content": {"text/plain": {}}}, ("401",))},
        "/v1/models": {"get": _op("the models served", _json("ModelList", "the models"), ("401",))},
        "/v1/translate/{model}": {"post": _op("translate one image", translated,
                                              ("400", "401", "404", "413", "415", "503"),
                                              parameters=[model, domain], requestBody=upload)},
        "/openapi.json": {"get": _op("this description", {"description": "OpenAPI 3.1",
                                                          "content": {_JSON: {}}}, secured=False)},
    }


def _v2(model: dict[str, Any]) -> dict[str, Any]:
    version = {"name": "version", "in": "path", "required": True, "schema": {"enum": ["1"]}}
    length = {"name": "Inference-Header-Content-Length", "in": "header", "schema": {"type": "integer"},
              "description": "with binary tensor data: the length of the JSON part of the body"}
    body = {"required": True, "content": {
        _JSON: {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                "description": "the JSON request, then the inputs' binary data"}}}}
    answer = {"description": "the outputs", "content": {
        _JSON: {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                "description": "the JSON answer (Inference-Header-Content-Length "
                                                               "bytes), then the outputs' binary data"}}},
        "headers": {"Inference-Header-Content-Length": {"schema": {"type": "integer"}}}}
    paths: dict[str, Any] = {
        "/v2": {"get": _op("server metadata", _json("ServerMetadata", "the server"), ("401",))},
        "/v2/health/live": {"get": _op("liveness", _json("Live", "live"), secured=False)},
        "/v2/health/ready": {"get": _op("readiness (400: not ready)", _json("Ready", "ready"), ("400",),
                                        secured=False)},
    }
    for base, params in (("/v2/models/{model}", [model]), ("/v2/models/{model}/versions/{version}", [model, version])):
        paths[base] = {"get": _op("model metadata", _json("ModelMetadata", "the model's tensors"),
                                  ("401", "404"), parameters=params)}
        paths[base + "/ready"] = {"get": _op("model readiness (400: not ready)", _json("Ready", "ready"),
                                             ("400", "401", "404"), parameters=params)}
        paths[base + "/infer"] = {"post": _op("inference", answer, ("400", "401", "404", "413", "415", "503"),
                                              parameters=[*params, length], requestBody=body)}
    return paths


def describe(model_names: list[str]) -> dict[str, Any]:
    """The description, for a service holding these models."""
    model = {"name": "model", "in": "path", "required": True, "schema": {"enum": model_names},
             "description": "a model's file name without .onnx"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "pyganx-runtime serve", "version": __version__,
                 "description": "Image translators exported by pyganx: the service's own API (/v1) and the "
                                "Open Inference Protocol (/v2, KServe and Triton's HTTP API)."},
        "paths": {**_v1(model), **_v2(model)},
        "components": {"schemas": _SCHEMAS,
                       "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                                     "description": "only when serve runs with --token"}}},
        "security": [{"token": []}, {}],
    }


__all__ = ["describe"]
