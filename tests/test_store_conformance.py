"""Conformance: the local store answers every operation of the TAMS 8.2 OpenAPI document.

The test walks ``tams-api/TimeAddressableMediaStore.yaml``: for every path and method it sends a
well-formed request (ids come from a Flow, Source, object, webhook, Profile and deletion request
made first) and checks that the store does not answer 404, 405 or 501, that the status is the
one the spec gives for success, and that any JSON body matches the schema the spec names for
that status (error bodies: ``error.json``).

``OPERATIONS`` says how to make each request; a spec operation without an entry fails the test,
so a new spec version cannot slip by. Deliberate exceptions: none. (Flow Profiles, webhooks,
object instances and deletion requests are all implemented; DELETEs answer 204 rather than 202
because the store deletes synchronously, which the spec allows.)

The helpers ``spec_response_schema`` and ``validate_spec`` are also used by the webhook tests to
check event bodies against the spec's ``webhooks`` section.
"""

from __future__ import annotations

import base64
import functools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from spec import validate

from tests.conftest import RunningStore

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = REPO_ROOT / "tams-api" / "TimeAddressableMediaStore.yaml"
SCHEMA_DIR = REPO_ROOT / "tams-api" / "schemas"
METHODS = ("get", "head", "put", "post", "delete")


# --- the OpenAPI document ------------------------------------------------------------------------


@functools.cache
def openapi() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


def spec_operations() -> list[tuple[str, str]]:
    """Every (METHOD, path template) of the spec."""
    return [(m.upper(), path) for path, item in openapi()["paths"].items() for m in METHODS if m in item]


@functools.cache
def _registry() -> Registry:
    return Registry().with_resources(
        (p.name, DRAFT202012.create_resource(json.loads(p.read_text(encoding="utf-8")))) for p in sorted(SCHEMA_DIR.glob("*.json"))
    )


def _local_refs(node: Any) -> Any:
    """The spec's inline schemas refer to ``schemas/x.json``; the registry knows ``x.json``."""
    if isinstance(node, list):
        return [_local_refs(item) for item in node]
    if isinstance(node, dict):
        out = {k: _local_refs(v) for k, v in node.items() if k not in ("example", "examples")}
        if isinstance(node.get("$ref"), str) and node["$ref"].startswith("schemas/"):
            out["$ref"] = node["$ref"].removeprefix("schemas/")
        return out
    return node


def validate_spec(instance: Any, schema: dict[str, Any]) -> None:
    """Validate against a schema taken from the OpenAPI document (``$ref``s resolved)."""
    Draft202012Validator(_local_refs(schema), registry=_registry(), format_checker=FormatChecker()).validate(instance)


def spec_response_schema(method: str, template: str, status: int) -> dict[str, Any] | None:
    """The JSON schema the spec gives for this response, if any."""
    responses = openapi()["paths"][template][method.lower()]["responses"]
    response = responses.get(str(status)) or responses.get(status)
    if response is None:
        return None
    if "$ref" in response:
        response = openapi()["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
    return response.get("content", {}).get("application/json", {}).get("schema")


def webhook_event_schema(event_type: str) -> dict[str, Any]:
    """The request body schema of an event in the spec's ``webhooks`` section."""
    post = openapi()["webhooks"][event_type]["post"]
    return post["requestBody"]["content"]["application/json"]["schema"]


# Where the spec's 2xx response has no usable schema but the store sends JSON anyway.
FALLBACK_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/"): {"type": "array", "items": {"type": "string"}},  # the spec only gives an example
    ("POST", "/service"): {"$ref": "schemas/service.json"},  # 200 "updated": we echo the service
}


# --- the world the requests need ---------------------------------------------------------------


@dataclass
class World:
    session: aiohttp.ClientSession
    url: str
    headers: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)

    async def send(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, headers=self.headers, **kwargs) as response:
            raw = await response.read()
            body = json.loads(raw) if raw and response.content_type == "application/json" else None
            return response.status, body

    async def must(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        got, body = await self.send(method, path, **kwargs)
        assert got == status, f"setup {method} {path}: {got} {body}"
        return body

    async def new_flow(self, **fields: Any) -> str:
        flow_id = str(uuid.uuid4())
        flow = {
            "id": flow_id,
            "source_id": str(uuid.uuid4()),
            "format": "urn:x-nmos:format:video",
            "codec": "video/h264",
            "container": "video/mp2t",
            "essence_parameters": {"frame_width": 320, "frame_height": 180, "frame_rate": {"numerator": 30}},
            **fields,
        }
        flow = {k: v for k, v in flow.items() if v is not None}  # None: leave the field out
        await self.must("PUT", f"/flows/{flow_id}", 201, json=flow)
        return flow_id

    async def new_webhook(self) -> str:
        body = await self.must(
            "POST",
            "/service/webhooks",
            201,
            json={"url": "http://127.0.0.1:9/unused", "events": ["sources/deleted"], "status": "disabled"},
        )
        return str(body["id"])


async def build_world(store: RunningStore, session: aiohttp.ClientSession) -> World:
    auth = "Basic " + base64.b64encode(f"{store.username}:{store.password}".encode()).decode()
    w = World(session, store.url, {"Authorization": auth})
    flow_id = await w.new_flow(label="conformance", description="a flow", tags={"genre": "news"}, max_bit_rate=5000)
    flow = await w.must("GET", f"/flows/{flow_id}", 200)
    w.ids["flowId"], w.ids["sourceId"] = flow_id, flow["source_id"]
    w.ids["collectorId"] = await w.new_flow(
        format="urn:x-nmos:format:multi",
        codec=None,
        essence_parameters=None,
        flow_collection=[{"id": flow_id, "role": "video"}],
    )
    objects = await w.must("POST", f"/flows/{flow_id}/storage", 201, json={"limit": 1})
    target = objects["media_objects"][0]
    async with session.put(
        target["put_url"]["url"], data=b"conformance bytes", headers={"Content-Type": target["put_url"]["content-type"]}
    ) as response:
        assert response.status == 201
    w.ids["objectId"] = target["object_id"]
    await w.must("POST", f"/flows/{flow_id}/segments", 201, json={"object_id": target["object_id"], "timerange": "[0:0_1:0)"})
    await w.must("PUT", f"/sources/{w.ids['sourceId']}/label", 204, json="conformance source")
    await w.must("PUT", f"/sources/{w.ids['sourceId']}/description", 204, json="a source")
    await w.must("PUT", f"/sources/{w.ids['sourceId']}/tags/genre", 204, json="news")
    w.ids["webhookId"] = await w.new_webhook()
    w.ids["profileId"] = str(uuid.uuid4())
    await w.must("POST", f"/service/profiles/{w.ids['profileId']}", 201, json=profile_body(w.ids["profileId"]))
    await w.must("DELETE", f"/flows/{flow_id}/segments", 204, params={"timerange": "[100:0_101:0)"})
    requests = await w.must("GET", "/flow-delete-requests", 200)
    w.ids["request-id"] = requests[0]["id"]
    return w


def profile_body(profile_id: str) -> dict[str, Any]:
    return {
        "id": profile_id,
        "label": "320x180 h264 in TS",
        "flow_metadata": {
            "format": "urn:x-nmos:format:video",
            "codec": "video/h264",
            "container": "video/mp2t",
            "essence_parameters": {"frame_width": 320, "frame_height": 180, "frame_rate": {"numerator": 30}},
        },
    }


# --- one well-formed request per operation ------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    status: int  # the success the spec gives for this request
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None


Op = Callable[[World], Awaitable[Request]]


def fixed(path: str, status: int = 200, **kwargs: Any) -> Op:
    async def op(w: World) -> Request:
        return Request(path.format(**w.ids), status, **kwargs)

    return op


def after(setup: Callable[[World], Awaitable[Any]], path: str, status: int, **kwargs: Any) -> Op:
    async def op(w: World) -> Request:
        await setup(w)
        return Request(path.format(**w.ids), status, **kwargs)

    return op


def put_value(path: str, value: Any) -> Callable[[World], Awaitable[Any]]:
    async def setup(w: World) -> None:
        await w.must("PUT", path.format(**w.ids), 204, json=value)

    return setup


async def _flow_put(w: World) -> Request:
    flow = await w.must("GET", f"/flows/{w.ids['flowId']}", 200)
    return Request(f"/flows/{w.ids['flowId']}", 204, json=flow)


async def _flow_delete(w: World) -> Request:
    return Request(f"/flows/{await w.new_flow()}", 204)


async def _segment_post(w: World) -> Request:
    objects = await w.must("POST", f"/flows/{w.ids['flowId']}/storage", 201, json={"limit": 1})
    segment = {"object_id": objects["media_objects"][0]["object_id"], "timerange": "[1:0_2:0)"}
    return Request(f"/flows/{w.ids['flowId']}/segments", 201, json=segment)


async def _webhook_put(w: World) -> Request:
    body = {
        "id": w.ids["webhookId"],
        "url": "http://127.0.0.1:9/other",
        "events": ["flows/deleted"],
        "status": "disabled",
    }
    return Request(f"/service/webhooks/{w.ids['webhookId']}", 201, json=body)


async def _webhook_delete(w: World) -> Request:
    return Request(f"/service/webhooks/{await w.new_webhook()}", 204)


async def _instance_delete(w: World) -> Request:
    label = f"mirror-{uuid.uuid4().hex[:8]}"
    body = {"url": "https://mirror.example.com/x", "label": label}
    await w.must("POST", f"/objects/{w.ids['objectId']}/instances", 201, json=body)
    return Request(f"/objects/{w.ids['objectId']}/instances", 204, params={"label": label})


F = "/flows/{flowId}"
S = "/sources/{sourceId}"
C = "/flows/{collectorId}"
OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/"): fixed("/"),
    ("HEAD", "/"): fixed("/"),
    ("GET", "/service"): fixed("/service"),
    ("HEAD", "/service"): fixed("/service"),
    ("POST", "/service"): fixed("/service", json={"name": "conformance store"}),
    ("GET", "/service/storage-backends"): fixed("/service/storage-backends"),
    ("HEAD", "/service/storage-backends"): fixed("/service/storage-backends"),
    ("GET", "/service/profiles"): fixed("/service/profiles"),
    ("HEAD", "/service/profiles"): fixed("/service/profiles"),
    ("GET", "/service/profiles/{profileId}"): fixed("/service/profiles/{profileId}"),
    ("HEAD", "/service/profiles/{profileId}"): fixed("/service/profiles/{profileId}"),
    ("POST", "/service/profiles/{profileId}"): (
        lambda w: (lambda pid: fixed(f"/service/profiles/{pid}", 201, json=profile_body(pid))(w))(str(uuid.uuid4()))
    ),
    ("GET", "/service/webhooks"): fixed("/service/webhooks"),
    ("HEAD", "/service/webhooks"): fixed("/service/webhooks"),
    ("POST", "/service/webhooks"): fixed(
        "/service/webhooks", 201, json={"url": "https://receiver.example.com/hook", "events": ["flows/created"]}
    ),
    ("GET", "/service/webhooks/{webhookId}"): fixed("/service/webhooks/{webhookId}"),
    ("HEAD", "/service/webhooks/{webhookId}"): fixed("/service/webhooks/{webhookId}"),
    ("PUT", "/service/webhooks/{webhookId}"): _webhook_put,
    ("DELETE", "/service/webhooks/{webhookId}"): _webhook_delete,
    ("GET", "/sources"): fixed("/sources"),
    ("HEAD", "/sources"): fixed("/sources"),
    ("GET", "/sources/{sourceId}"): fixed(S),
    ("HEAD", "/sources/{sourceId}"): fixed(S),
    ("GET", "/sources/{sourceId}/tags"): fixed(S + "/tags"),
    ("HEAD", "/sources/{sourceId}/tags"): fixed(S + "/tags"),
    ("GET", "/sources/{sourceId}/tags/{name}"): fixed(S + "/tags/genre"),
    ("HEAD", "/sources/{sourceId}/tags/{name}"): fixed(S + "/tags/genre"),
    ("PUT", "/sources/{sourceId}/tags/{name}"): fixed(S + "/tags/mood", 204, json=["calm", "bright"]),
    ("DELETE", "/sources/{sourceId}/tags/{name}"): after(put_value(S + "/tags/gone", "x"), S + "/tags/gone", 204),
    ("GET", "/sources/{sourceId}/description"): fixed(S + "/description"),
    ("HEAD", "/sources/{sourceId}/description"): fixed(S + "/description"),
    ("PUT", "/sources/{sourceId}/description"): fixed(S + "/description", 204, json="described"),
    ("DELETE", "/sources/{sourceId}/description"): after(put_value(S + "/description", "soon gone"), S + "/description", 204),
    ("GET", "/sources/{sourceId}/label"): fixed(S + "/label"),
    ("HEAD", "/sources/{sourceId}/label"): fixed(S + "/label"),
    ("PUT", "/sources/{sourceId}/label"): fixed(S + "/label", 204, json="labelled"),
    ("DELETE", "/sources/{sourceId}/label"): after(put_value(S + "/label", "soon gone"), S + "/label", 204),
    ("GET", "/flows"): fixed("/flows"),
    ("HEAD", "/flows"): fixed("/flows"),
    ("GET", "/flows/{flowId}"): fixed(F, params={"include_timerange": "true"}),
    ("HEAD", "/flows/{flowId}"): fixed(F),
    ("PUT", "/flows/{flowId}"): _flow_put,
    ("DELETE", "/flows/{flowId}"): _flow_delete,
    ("GET", "/flows/{flowId}/tags"): fixed(F + "/tags"),
    ("HEAD", "/flows/{flowId}/tags"): fixed(F + "/tags"),
    ("GET", "/flows/{flowId}/tags/{name}"): fixed(F + "/tags/genre"),
    ("HEAD", "/flows/{flowId}/tags/{name}"): fixed(F + "/tags/genre"),
    ("PUT", "/flows/{flowId}/tags/{name}"): fixed(F + "/tags/mood", 204, json="calm"),
    ("DELETE", "/flows/{flowId}/tags/{name}"): after(put_value(F + "/tags/gone", ["x"]), F + "/tags/gone", 204),
    ("GET", "/flows/{flowId}/description"): fixed(F + "/description"),
    ("HEAD", "/flows/{flowId}/description"): fixed(F + "/description"),
    ("PUT", "/flows/{flowId}/description"): fixed(F + "/description", 204, json="described"),
    ("DELETE", "/flows/{flowId}/description"): after(put_value(F + "/description", "soon gone"), F + "/description", 204),
    ("GET", "/flows/{flowId}/label"): fixed(F + "/label"),
    ("HEAD", "/flows/{flowId}/label"): fixed(F + "/label"),
    ("PUT", "/flows/{flowId}/label"): fixed(F + "/label", 204, json="labelled"),
    ("DELETE", "/flows/{flowId}/label"): after(put_value(F + "/label", "soon gone"), F + "/label", 204),
    ("GET", "/flows/{flowId}/read_only"): fixed(F + "/read_only"),
    ("HEAD", "/flows/{flowId}/read_only"): fixed(F + "/read_only"),
    ("PUT", "/flows/{flowId}/read_only"): fixed(F + "/read_only", 204, json=False),
    ("GET", "/flows/{flowId}/flow_collection"): fixed(C + "/flow_collection"),
    ("HEAD", "/flows/{flowId}/flow_collection"): fixed(C + "/flow_collection"),
    ("PUT", "/flows/{flowId}/flow_collection"): fixed(C + "/flow_collection", 204, json=[{"id": "{flowId}", "role": "picture"}]),
    ("DELETE", "/flows/{flowId}/flow_collection"): after(put_value(F + "/flow_collection", []), F + "/flow_collection", 204),
    ("GET", "/flows/{flowId}/max_bit_rate"): fixed(F + "/max_bit_rate"),
    ("HEAD", "/flows/{flowId}/max_bit_rate"): fixed(F + "/max_bit_rate"),
    ("PUT", "/flows/{flowId}/max_bit_rate"): fixed(F + "/max_bit_rate", 204, json=6000),
    ("DELETE", "/flows/{flowId}/max_bit_rate"): after(put_value(F + "/max_bit_rate", 1), F + "/max_bit_rate", 204),
    ("GET", "/flows/{flowId}/avg_bit_rate"): after(put_value(F + "/avg_bit_rate", 2500), F + "/avg_bit_rate", 200),
    ("HEAD", "/flows/{flowId}/avg_bit_rate"): after(put_value(F + "/avg_bit_rate", 2500), F + "/avg_bit_rate", 200),
    ("PUT", "/flows/{flowId}/avg_bit_rate"): fixed(F + "/avg_bit_rate", 204, json=3000),
    ("DELETE", "/flows/{flowId}/avg_bit_rate"): after(put_value(F + "/avg_bit_rate", 1), F + "/avg_bit_rate", 204),
    ("GET", "/flows/{flowId}/segments"): fixed(F + "/segments", params={"include_object_timerange": "true"}),
    ("HEAD", "/flows/{flowId}/segments"): fixed(F + "/segments"),
    ("POST", "/flows/{flowId}/segments"): _segment_post,
    ("DELETE", "/flows/{flowId}/segments"): fixed(F + "/segments", 204, params={"timerange": "[50:0_60:0)"}),
    ("POST", "/flows/{flowId}/storage"): fixed(F + "/storage", 201, json={"limit": 2}),
    ("GET", "/objects/{objectId}"): fixed("/objects/{objectId}", params={"verbose_storage": "true"}),
    ("HEAD", "/objects/{objectId}"): fixed("/objects/{objectId}"),
    ("POST", "/objects/{objectId}/instances"): (
        lambda w: fixed(
            "/objects/{objectId}/instances",
            201,
            json={"url": "https://copy.example.com/obj", "label": f"copy-{uuid.uuid4().hex[:8]}"},
        )(w)
    ),
    ("DELETE", "/objects/{objectId}/instances"): _instance_delete,
    ("GET", "/flow-delete-requests"): fixed("/flow-delete-requests"),
    ("HEAD", "/flow-delete-requests"): fixed("/flow-delete-requests"),
    ("GET", "/flow-delete-requests/{request-id}"): fixed("/flow-delete-requests/{request-id}"),
    ("HEAD", "/flow-delete-requests/{request-id}"): fixed("/flow-delete-requests/{request-id}"),
}

# (METHOD, path template) -> why the store deliberately does not serve it. Empty: it serves all.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _format_json(value: Any, ids: dict[str, str]) -> Any:
    """Fill ``{flowId}``-style placeholders inside JSON bodies."""
    if isinstance(value, str):
        return value.format(**ids) if "{" in value else value
    if isinstance(value, list):
        return [_format_json(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _format_json(v, ids) for k, v in value.items()}
    return value


@pytest.fixture
async def world(shared_store: RunningStore) -> AsyncIterator[World]:
    async with aiohttp.ClientSession() as session:
        yield await build_world(shared_store, session)


def test_the_operation_table_covers_the_spec_exactly() -> None:
    spec_ops = set(spec_operations())
    assert len(spec_ops) > 80  # the 8.2 document, not an empty parse
    missing = spec_ops - OPERATIONS.keys() - EXCEPTIONS.keys()
    stale = (OPERATIONS.keys() | EXCEPTIONS.keys()) - spec_ops
    assert not missing, f"spec operations without a conformance request: {sorted(missing)}"
    assert not stale, f"conformance requests for operations the spec does not have: {sorted(stale)}"


async def test_every_spec_operation_is_served_with_spec_bodies(world: World) -> None:
    failures: list[str] = []
    for method, template in spec_operations():
        if (method, template) in EXCEPTIONS:
            continue
        request = await OPERATIONS[(method, template)](world)
        body_json = _format_json(request.json, world.ids) if request.json is not None else None
        status, body = await world.send(
            method, request.path, params=request.params, **({"json": body_json} if body_json is not None else {})
        )
        where = f"{method} {template} ({request.path})"
        if status in (404, 405, 501) or status != request.status:
            failures.append(f"{where}: {status} (wanted {request.status}) {json.dumps(body)[:300]}")
            continue
        if method == "HEAD":
            if body is not None:
                failures.append(f"{where}: HEAD answered with a body")
            continue
        schema = spec_response_schema(method, template, status) or FALLBACK_SCHEMAS.get((method, template))
        if body is None:
            if schema is not None:
                failures.append(f"{where}: no JSON body, but the spec gives one for {status}")
            continue
        if schema is None:
            failures.append(f"{where}: JSON body where the spec gives none for {status}")
            continue
        try:
            validate_spec(body, schema)
        except Exception as exc:  # noqa: BLE001 - collected into the report
            failures.append(f"{where}: body does not match the spec: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)


async def test_unknown_paths_and_methods_get_spec_error_bodies(world: World) -> None:
    for method, path, wanted in (
        ("GET", "/no-such-thing", 404),
        ("POST", "/flows", 405),
        ("PUT", f"/sources/{world.ids['sourceId']}", 405),
        ("DELETE", "/service", 405),
        ("PATCH", f"/flows/{world.ids['flowId']}", 405),
        ("PUT", "/flow-delete-requests", 405),
        ("POST", f"/objects/{world.ids['objectId']}", 405),
        ("GET", f"/objects/{world.ids['objectId']}/instances", 405),
        ("DELETE", f"/flows/{world.ids['flowId']}/read_only", 405),
        ("POST", "/service/profiles", 405),
        ("PUT", f"/service/profiles/{world.ids['profileId']}", 405),
    ):
        status, body = await world.send(method, path)
        assert status == wanted, (method, path, status, body)
        validate(body, "error.json")
