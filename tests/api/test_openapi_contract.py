"""The API's typed contract: every answer has a real schema in /openapi.json, and real answers
of a live server validate against it (timestamps in the one format, snake_case keys)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from flowlink.linking import keys
from flowlink.timestamps import format_timestamp, parse_timestamp
from tests.conftest import LiveServer

# Operations whose success answer is free-form by design: a webhook answers with whatever its
# flow returned (its callers are not flowlink clients).
FREE_FORM_OPERATIONS = {f"webhook_{m}" for m in ("get", "post", "put", "patch", "delete")}
ERROR_STATUSES = ("401", "403", "404", "422", "500")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
CAMEL = re.compile(r"^[a-z]+[A-Z]")
# Keys inside these fields are data (a flow's inputs and outputs, a config, an event's stored
# source record), not the API's own field names.
FREE_FORM_FIELDS = {
    "input_value",
    "output_value",
    "payload",
    "source",
    "config",
    "automations",
    "trigger",
    "value",
    "files",
    "changes",
    "webhook_keys",
    "checks",
    "config_schema",
}
FLOW = """def handler(system, this, inputs):
    this.log('hello')
    return this.success('done', got=inputs)
"""


@pytest.fixture
def spec(live_server: LiveServer) -> dict[str, Any]:
    response = live_server.client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _typed(spec: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is no real top-level schema, or None when it is one."""
    schema = _resolve(spec, schema)
    if "anyOf" in schema or "oneOf" in schema:
        for option in schema.get("anyOf", schema.get("oneOf")):
            if (why := _typed(spec, option)) is not None:
                return why
        return None
    if schema.get("additionalProperties") is True or (
        schema.get("type") == "object" and not schema.get("properties")
    ):
        return "a dict of anything"
    if schema.get("type") not in ("object", "array", "string"):
        return f"no type (schema {schema})"
    return None


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_every_success_answer_has_a_typed_schema(spec: dict[str, Any]) -> None:
    problems = []
    operations = _operations(spec)
    assert len(operations) >= 60  # the whole API is in the document
    for path, method, operation in operations:
        where = f"{method.upper()} {path}"
        successes = {s: r for s, r in operation["responses"].items() if s.startswith("2")}
        assert successes, f"{where}: no success response"
        for status, response in successes.items():
            content = response.get("content")
            if status == "204":
                if content:
                    problems.append(f"{where}: 204 declares a body")
                continue
            if not content:
                problems.append(f"{where} {status}: no media type")
                continue
            for media, body in content.items():
                schema = body.get("schema")
                if not schema:
                    problems.append(f"{where} {status} {media}: no schema")
                elif operation.get("operationId") in FREE_FORM_OPERATIONS and status == "200":
                    continue
                elif (why := _typed(spec, schema)) is not None:
                    problems.append(f"{where} {status} {media}: {why}")
    assert not problems, "\n".join(problems)


def test_every_operation_documents_the_error_shape(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    detail = _resolve(spec, error["properties"]["error"])
    assert set(detail["required"]) == {"code", "message", "details"}
    for path, method, operation in _operations(spec):
        for status in ERROR_STATUSES:
            response = operation["responses"].get(status)
            assert response, f"{method.upper()} {path}: {status} is not documented"
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, status)


def _validator(spec: dict[str, Any], path: str, method: str, status: int) -> Draft202012Validator:
    responses = spec["paths"][path][method]["responses"]
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": spec["components"]})


def _check_keys(value: Any, where: str = "") -> None:
    """snake_case keys and the one timestamp format, outside free-form data."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert not CAMEL.match(key), f"{where}.{key}: not snake_case"
            if key.endswith("_at") and item is not None:
                assert TIMESTAMP.match(item), f"{where}.{key}: {item!r}"
            if key not in FREE_FORM_FIELDS:
                _check_keys(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_keys(item, where + "[]")


def test_real_answers_validate_against_the_schema(
    spec: dict[str, Any], live_server: LiveServer
) -> None:
    client = live_server.client
    checked: list[str] = []

    def call(method: str, url: str, path: str, status: int, **kwargs: Any) -> Any:
        response = client.request(method.upper(), url, **kwargs)
        assert response.status_code == status, (url, response.text)
        body = response.json()
        errors = list(_validator(spec, path, method, status).iter_errors(body))
        assert not errors, f"{method.upper()} {url}: {errors[0].message} at {errors[0].path}"
        _check_keys(body, url)
        checked.append(f"{method} {path}")
        return body

    ws = "/api/v1/workspaces/{ws}"
    files = {
        "workspace.yml": "name: Contract\nslug: contract\n",
        "flows/hello.py": FLOW,
        "pages/index.html": "<h1>{{ title }}</h1>",
        "pages/index.yml": "title: Home\naccess: public\n",
        "pages/team.html": "<p>team</p>",
        "pages/team.yml": "access: [owner, editor]\nevents: {types: [order.paid], limit: 2}\n",
    }
    call("post", "/api/v1/workspaces/contract/apply", ws + "/apply", 200, json={"files": files})
    call("get", "/api/v1/workspaces", "/api/v1/workspaces", 200)
    call("get", "/api/v1/workspaces/contract", ws, 200)
    call("get", "/api/v1/workspaces/contract/flows", ws + "/flows", 200)
    call("get", "/api/v1/workspaces/contract/pages", ws + "/pages", 200)
    call("get", "/api/v1/workspaces/contract/export", ws + "/export", 200)
    setting = "/api/v1/workspaces/contract/settings/limit"
    call("put", setting, ws + "/settings/{name}", 200, json={"value": {"max": 3}})
    call("get", "/api/v1/workspaces/contract/settings", ws + "/settings", 200)
    stored = call(
        "put", "/api/v1/workspaces/contract/files/a/b.txt", ws + "/files/{path}", 201, content=b"hi"
    )
    assert stored["sha256"] and stored["content_type"].startswith("text/plain")
    call("get", "/api/v1/workspaces/contract/files", ws + "/files", 200)
    call("get", "/api/v1/workspaces/contract/members", ws + "/members", 200)

    base = "/api/v1/workspaces/contract/executions"
    done = call(
        "post",
        base,
        ws + "/executions",
        201,
        json={"flow": "hello", "inputs": {"a": 1}, "wait": 30},
    )
    assert done["status"] == "success" and done["output_value"]["got"] == {"a": 1}
    call("get", base, ws + "/executions", 200)
    call("get", f"{base}/{done['id']}", ws + "/executions/{execution_id}", 200)
    logs = call("get", f"{base}/{done['id']}/logs", ws + "/executions/{execution_id}/logs", 200)
    assert logs["items"] and TIMESTAMP.match(logs["items"][0]["created_at"])

    events = "/api/v1/workspaces/contract/events"
    one = call("post", events, ws + "/events", 201, json={"type": "order.paid", "payload": {}})
    assert TIMESTAMP.match(one["created_at"])
    batch = [{"type": "order.paid", "payload": {"n": n}} for n in range(2)]
    many = call("post", events, ws + "/events", 201, json={"events": batch})
    assert many["count"] == 2 and many["correlation_id"]
    page = call("get", events, ws + "/events", 200)
    assert {e["type"] for e in page["items"]} >= {"order.paid", "executions.created"}

    pair = keys.generate_key_pair()
    link = {
        "name": "edge",
        "own_private_key": pair.private_pem,
        "remote_public_key": pair.public_pem,
    }
    links = "/api/v1/workspaces/contract/sync_config"
    view = call("post", links, ws + "/sync_config", 201, json=link)
    assert "send_all_mark" not in str(view) and "PRIVATE" not in str(view)
    call("get", links, ws + "/sync_config", 200)
    call("get", f"{links}/edge", ws + "/sync_config/{name}", 200)

    call("get", "/api/v1/auth/me", "/api/v1/auth/me", 200)
    token = call("post", "/api/v1/tokens", "/api/v1/tokens", 201, json={"name": "ci"})
    listed = call("get", "/api/v1/tokens", "/api/v1/tokens", 200)
    assert token["token"] not in str(listed) and all("token" not in t for t in listed["items"])
    call("get", "/api/v1/users", "/api/v1/users", 200)
    call("get", "/api/v1/workers", "/api/v1/workers", 200)
    call("get", "/api/v1/health", "/api/v1/health", 200)
    call("get", "/api/v1/ready", "/api/v1/ready", 200)
    missing = call("get", f"{base}/nope", ws + "/executions/{execution_id}", 404)
    assert missing["error"]["code"] == "not_found"
    invalid = call("get", f"{base}?limit=0", ws + "/executions", 422)
    assert invalid["error"]["details"]["errors"][0]["field"] == "limit"
    assert len(checked) == 30


def test_a_model_that_does_not_fit_fails_the_check(spec: dict[str, Any]) -> None:
    """The check above can fail: an answer without a required field or with a time in
    another format is refused."""
    validator = _validator(spec, "/api/v1/workspaces/{ws}", "get", 200)
    assert list(validator.iter_errors({"id": "x", "slug": "y"}))
    with pytest.raises(AssertionError):
        _check_keys({"created_at": "2023-12-02 09:49:56.018374+00:00"})
    with pytest.raises(AssertionError):
        _check_keys({"webhookKeys": {}})


def test_the_one_time_format_and_the_old_forms_it_reads() -> None:
    """What a server of the previous version sent (link messages, stored link state, query
    parameters) still parses; everything is written in one form."""
    moment = datetime(2023, 12, 2, 9, 49, 56, 18374, tzinfo=UTC)
    assert format_timestamp(moment) == "2023-12-02T09:49:56.018Z"
    assert format_timestamp(moment.replace(tzinfo=None)) == "2023-12-02T09:49:56.018Z"
    assert format_timestamp(moment.astimezone(timezone(timedelta(hours=2)))) == (
        "2023-12-02T09:49:56.018Z"
    )
    for old in (
        "2023-12-02 09:49:56.018374+00:00",
        "2023-12-02T09:49:56.018374Z",
        "2023-12-02T09:49:56.018374+00:00",
        "2023-12-02T10:49:56.018374+01:00",
        "2023-12-02T10:49:56.018374 01:00",  # a '+' that a query string turned into a space
        "2023-12-02T09:49:56.018374",
    ):
        assert parse_timestamp(old) == moment, old
    assert parse_timestamp("2023-12-02T09:49:56.018Z") == moment.replace(microsecond=18000)
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")
