"""The proxy's decisions, route family by route family: (caller groups, resource classes, route,
method) -> outcome, end to end through a real local store.

Each case says what the proxy must do: answer a status itself (403, 404, 400...) without the
request reaching the store, or forward it (``FWD``: the recording forwarder in front of the
store saw it). Forwarded cases on routes the local store implements also pin the store's
status. Routes the store does not implement yet still prove the decision: forwarded or not.

Callers (token groups): news [news_read], editor [news_read news_write], chief [news_read
news_write news_delete], writer [news_write], sport [sport_read sport_write sport_delete],
mixed [news_read news_write sport_read], mover [news_read news_write news_delete sport_write],
outsider [], admin [admin], and readscope (chief's groups, but a token scoped to tams-api/read
only).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from authz_support import PROXY_CLIENT, ProxyEnv, client, new_id, start_env, video_flow
from store_http import ELSEWHERE

from authz_proxy.classes import ClassModel
from tests.conftest import start_store

FWD = "forwarded"

CLIENTS = [
    PROXY_CLIENT,
    client("admin", ["admin"], ["tams-api/read", "tams-api/write", "tams-api/delete", "tams-api/admin"]),
    client("news", ["news_read"]),
    client("editor", ["news_read", "news_write"]),
    client("chief", ["news_read", "news_write", "news_delete"]),
    client("writer", ["news_write"]),
    client("sport", ["sport_read", "sport_write", "sport_delete"]),
    client("mixed", ["news_read", "news_write", "sport_read"]),
    client("outsider", []),
    client("readscope", ["news_read", "news_write", "news_delete"], ["tams-api/read"]),
    client("mover", ["news_read", "news_write", "news_delete", "sport_write"]),
]


@dataclass
class World:
    env: ProxyEnv
    ids: dict[str, str]
    model: ClassModel


def register_segment(env: ProxyEnv, flow_id: str, timerange: str, object_id: str | None = None) -> str:
    """Allocate (unless reusing ``object_id``), upload and register one segment, straight on the store."""
    if object_id is None:
        answer = env.store_call("POST", f"/flows/{flow_id}/storage", {"limit": 1})
        assert answer.status == 201, answer.body
        target = answer.json()["media_objects"][0]
        object_id = target["object_id"]
        put = target["put_url"]
        headers = {"Content-Type": put.get("content-type", "video/mp2t"), **put.get("headers", {})}
        uploaded = env.call(None, "PUT", "", data=b"\x47" * 188, headers=headers, base=put["url"])
        assert uploaded.status in (200, 201, 204), uploaded.body
    answer = env.store_call("POST", f"/flows/{flow_id}/segments", {"object_id": object_id, "timerange": timerange})
    assert answer.status == 201, answer.body
    return object_id


# The store is tagged the class way (news, sport, archive: no tag ends in read, write or
# delete), so every decision must come out the same whether the proxy is told ``class`` or
# left at ``auto``.
@pytest.fixture(scope="module", params=[ClassModel.CLASS, ClassModel.AUTO], ids=lambda m: f"model={m}")
def world(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[World]:
    store = start_store(tmp_path_factory.mktemp("authz-decisions") / "data", clients=CLIENTS)
    env = start_env(store, class_model=request.param)
    ids: dict[str, str] = {}
    flows = {"NEWS": ["news"], "SPORT": ["sport"], "BOTH": ["news", "sport"], "NONE": None, "STR": "archive, news"}
    for name, classes in flows.items():
        ids[name], ids[name + "_SRC"] = new_id(), new_id()
        answer = env.store_call("PUT", f"/flows/{ids[name]}", video_flow(ids[name], ids[name + "_SRC"], classes))
        assert answer.status == 201, answer.body
    for name, classes in flows.items():
        if classes is not None:
            answer = env.store_call("PUT", f"/sources/{ids[name + '_SRC']}/tags/auth_classes", classes)
            assert answer.status == 204, answer.body
    ids["O_NEWS"] = register_segment(env, ids["NEWS"], "[0:0_1:0)")
    ids["O_SPORT"] = register_segment(env, ids["SPORT"], "[0:0_1:0)")
    ids["O_SHARED"] = register_segment(env, ids["SPORT"], "[1:0_2:0)")
    register_segment(env, ids["NEWS"], "[1:0_2:0)", ids["O_SHARED"])
    yield World(env, ids, request.param)
    env.close()
    store.stop()


@dataclass
class Case:
    caller: str
    method: str
    path: str
    expect: int | str  # a status the proxy answers itself, FWD, or a status the store answers when forwarded
    body: Any = None
    fresh: list[str] | str | None = None  # classes of a new Flow created for this case as {NEW}
    raw: bytes | None = None

    @property
    def name(self) -> str:
        return f"{self.caller}-{self.method}-{self.path}-{self.expect}"


C = Case
WEBHOOK = {"url": "http://127.0.0.1:9/hook", "api_key_name": "k", "api_key_value": "v",
           "events": ["flows/segments_added"]}
PROPS: dict[str, Any] = {"description": "about", "label": "a label", "max_bit_rate": 5000, "avg_bit_rate": 4000,
                         "flow_collection": [], "read_only": False}

CASES: list[Case] = [
    # --- open to any authenticated caller, and admin-only ----------------------------------
    C("outsider", "GET", "/", 200), C("outsider", "HEAD", "/", 200),
    C("outsider", "GET", "/service", 200), C("outsider", "HEAD", "/service", 200),
    C("outsider", "GET", "/service/storage-backends", 200), C("outsider", "HEAD", "/service/storage-backends", 200),
    C("outsider", "GET", "/service/profiles", FWD), C("outsider", "HEAD", "/service/profiles", FWD),
    C("outsider", "GET", "/service/profiles/{RAND}", FWD), C("outsider", "HEAD", "/service/profiles/{RAND}", FWD),
    C("news", "POST", "/service", 403, {"description": "mine now"}),
    C("readscope", "POST", "/service", 403, {"description": "mine now"}),
    C("admin", "POST", "/service", 200, {"description": "a shared store"}),
    C("news", "POST", "/service/profiles/{RAND}", 403, {"label": "p"}),
    C("admin", "POST", "/service/profiles/{RAND}", FWD, {"label": "p"}),
    C("news", "GET", "/flow-delete-requests", 403), C("chief", "HEAD", "/flow-delete-requests", 403),
    C("admin", "GET", "/flow-delete-requests", FWD), C("admin", "HEAD", "/flow-delete-requests", FWD),
    C("chief", "GET", "/flow-delete-requests/{RAND}", 404), C("chief", "HEAD", "/flow-delete-requests/{RAND}", 404),
    C("admin", "GET", "/flow-delete-requests/{RAND}", FWD),
    # --- one Flow ---------------------------------------------------------------------------
    C("news", "GET", "/flows/{NEWS}", 200), C("news", "HEAD", "/flows/{NEWS}", 200),
    C("news", "GET", "/flows/{NEWS}?include_timerange=true", 200),
    C("sport", "GET", "/flows/{NEWS}", 404), C("sport", "HEAD", "/flows/{NEWS}", 404),
    C("outsider", "GET", "/flows/{NEWS}", 404), C("writer", "GET", "/flows/{NEWS}", 403),
    C("admin", "GET", "/flows/{NEWS}", 200), C("readscope", "GET", "/flows/{NEWS}", 200),
    C("sport", "GET", "/flows/{BOTH}", 200), C("news", "GET", "/flows/{BOTH}", 200),
    C("news", "GET", "/flows/{NONE}", 404), C("admin", "GET", "/flows/{NONE}", 200),
    C("news", "GET", "/flows/{STR}", 200), C("sport", "GET", "/flows/{STR}", 404),
    C("news", "GET", "/flows/{RAND}", 404), C("admin", "GET", "/flows/{RAND}", 404),
    C("news", "GET", "/flows/{NEWS}?timerange=nonsense", 400),
    # Flow PUT: replace an existing Flow
    C("editor", "PUT", "/flows/{NEW}", 204, "same", fresh=["news"]),
    C("editor", "PUT", "/flows/{NEW}", 403, "sport too", fresh=["news"]),
    C("editor", "PUT", "/flows/{NEW}", 403, "untagged", fresh=["news"]),
    # all three permissions on the Flow, but sport is not the caller's to hand out
    C("chief", "PUT", "/flows/{NEW}", 403, "sport too", fresh=["news"]),
    C("chief", "PUT", "/flows/{NEW}", 403, "sport only", fresh=["news"]),
    C("mover", "PUT", "/flows/{NEW}", 204, "sport too", fresh=["news"]),
    C("mover", "PUT", "/flows/{NEW}", 204, "sport only", fresh=["news"]),
    C("chief", "PUT", "/flows/{NEW}", 204, "untagged", fresh=["news"]),
    C("news", "PUT", "/flows/{NEW}", 403, "same", fresh=["news"]),
    C("sport", "PUT", "/flows/{NEW}", 404, "same", fresh=["news"]),
    C("readscope", "PUT", "/flows/{NEW}", 403, "same", fresh=["news"]),
    C("admin", "PUT", "/flows/{NEW}", 204, "untagged", fresh=["news"]),
    # Flow PUT: a new Flow
    C("editor", "PUT", "/flows/{RAND}", 201, "new news"),
    C("editor", "PUT", "/flows/{RAND}", 403, "new untagged"),
    C("editor", "PUT", "/flows/{RAND}", 403, "new sport"),
    C("mixed", "PUT", "/flows/{RAND}", 403, "new news and sport"),
    C("news", "PUT", "/flows/{RAND}", 403, "new news"),
    C("writer", "PUT", "/flows/{RAND}", 201, "new news"),
    C("admin", "PUT", "/flows/{RAND}", 201, "new untagged"),
    C("editor", "PUT", "/flows/{RAND}", 404, "new news on SPORT_SRC"),
    C("sport", "PUT", "/flows/{RAND}", 201, "new sport on SPORT_SRC"),
    C("mixed", "PUT", "/flows/{RAND}", 403, "new news on SPORT_SRC"),
    C("editor", "PUT", "/flows/{RAND}", 201, "new news collecting BOTH"),
    C("editor", "PUT", "/flows/{RAND}", 404, "new news collecting SPORT"),
    C("editor", "PUT", "/flows/{RAND}", 400, raw=b"[1, 2]"),
    C("editor", "PUT", "/flows/{RAND}", 400, raw=b'{"id": "x"}'),
    C("editor", "PUT", "/flows/{RAND}", 400, "bad auth_classes"),
    C("admin", "PUT", "/flows/{RAND}", 400, "bad tags"),
    # Flow DELETE
    C("editor", "DELETE", "/flows/{NEW}", 403, fresh=["news"]),
    C("chief", "DELETE", "/flows/{NEW}", 204, fresh=["news"]),
    C("sport", "DELETE", "/flows/{NEW}", 404, fresh=["news"]),
    C("news", "DELETE", "/flows/{NEW}", 403, fresh="archive,news"),
    C("admin", "DELETE", "/flows/{NEW}", 204, fresh=None),
    C("chief", "DELETE", "/flows/{NEW}", 404, fresh=None),
    C("chief", "DELETE", "/flows/{RAND}", 404),
    # --- Flow tags ----------------------------------------------------------------------------
    C("news", "GET", "/flows/{NEWS}/tags", FWD), C("news", "HEAD", "/flows/{NEWS}/tags", FWD),
    C("sport", "GET", "/flows/{NEWS}/tags", 404),
    C("news", "GET", "/flows/{NEWS}/tags/genre", FWD), C("news", "HEAD", "/flows/{NEWS}/tags/genre", FWD),
    C("sport", "GET", "/flows/{NEWS}/tags/genre", 404),
    C("editor", "PUT", "/flows/{NEWS}/tags/genre", FWD, "drama"),
    C("editor", "PUT", "/flows/{NEWS}/tags/genre", FWD, ["drama", "news"]),
    C("news", "PUT", "/flows/{NEWS}/tags/genre", 403, "drama"),
    C("sport", "PUT", "/flows/{NEWS}/tags/genre", 404, "drama"),
    C("editor", "PUT", "/flows/{NEWS}/tags/genre", 400, {"not": "a tag"}),
    C("editor", "PUT", "/flows/{NEWS}/tags/genre", 400, 5),
    C("admin", "PUT", "/flows/{NEWS}/tags/genre", 400, ["x", 1]),
    C("editor", "DELETE", "/flows/{NEWS}/tags/genre", FWD),
    C("news", "DELETE", "/flows/{NEWS}/tags/genre", 403),
    C("editor", "PUT", "/flows/{NEWS}/tags/auth_classes", FWD, ["news"]),
    C("editor", "PUT", "/flows/{NEWS}/tags/auth_classes", FWD, "news"),
    C("editor", "PUT", "/flows/{NEWS}/tags/auth_classes", 403, ["news", "sport"]),
    C("editor", "PUT", "/flows/{NEWS}/tags/auth%5Fclasses", 403, ["news", "sport"]),
    C("editor", "DELETE", "/flows/{NEWS}/tags/auth_classes", 403),
    C("chief", "PUT", "/flows/{NEW}/tags/auth_classes", 403, ["news", "sport"], fresh=["news"]),
    C("chief", "PUT", "/flows/{NEW}/tags/auth_classes", 403, ["sport"], fresh=["news"]),
    C("chief", "PUT", "/flows/{NEW}/tags/auth_classes", 403, "news,sport", fresh=["news"]),
    C("chief", "PUT", "/flows/{NEW}/tags/auth%5Fclasses", 403, ["sport"], fresh=["news"]),
    C("mover", "PUT", "/flows/{NEW}/tags/auth_classes", FWD, ["news", "sport"], fresh=["news"]),
    C("mover", "PUT", "/flows/{NEW}/tags/auth_classes", FWD, ["sport"], fresh=["news"]),
    C("chief", "PUT", "/flows/{NEW}/tags/auth_classes", FWD, ["news"], fresh=["news", "sport"]),
    C("chief", "DELETE", "/flows/{NEW}/tags/auth_classes", FWD, fresh=["news"]),
    C("readscope", "DELETE", "/flows/{NEW}/tags/auth_classes", 403, fresh=["news"]),
    C("sport", "PUT", "/flows/{NEWS}/tags/auth_classes", 404, ["sport"]),
    C("chief", "PUT", "/flows/{NEWS}/tags/auth_classes", 400, ["news", 1]),
    C("chief", "PUT", "/flows/{NEWS}/tags/auth_classes", 400, {"news": True}),
    # --- Flow properties ----------------------------------------------------------------------
    *[C("news", m, f"/flows/{{NEWS}}/{p}", FWD) for p in PROPS for m in ("GET", "HEAD")],
    *[C("sport", "GET", f"/flows/{{NEWS}}/{p}", 404) for p in PROPS],
    *[C("editor", "PUT", f"/flows/{{NEWS}}/{p}", FWD, v) for p, v in PROPS.items()],
    *[C("news", "PUT", f"/flows/{{NEWS}}/{p}", 403, v) for p, v in PROPS.items()],
    *[C("sport", "PUT", f"/flows/{{NEWS}}/{p}", 404, v) for p, v in PROPS.items()],
    *[C("editor", "DELETE", f"/flows/{{NEWS}}/{p}", FWD) for p in PROPS if p != "read_only"],
    *[C("news", "DELETE", f"/flows/{{NEWS}}/{p}", 403) for p in PROPS if p != "read_only"],
    C("editor", "PUT", "/flows/{NEWS}/label", 400, raw=b"not json"),
    C("editor", "PUT", "/flows/{NEWS}/flow_collection", FWD, "collect BOTH"),
    C("editor", "PUT", "/flows/{NEWS}/flow_collection", 404, "collect SPORT"),
    C("editor", "PUT", "/flows/{NEWS}/flow_collection", 400, {"id": "x"}),
    # --- segments and storage -------------------------------------------------------------------
    C("news", "GET", "/flows/{NEWS}/segments", 200), C("news", "HEAD", "/flows/{NEWS}/segments", 200),
    C("sport", "GET", "/flows/{NEWS}/segments", 404), C("writer", "GET", "/flows/{NEWS}/segments", 403),
    C("news", "GET", "/flows/{RAND}/segments", 404), C("admin", "GET", "/flows/{RAND}/segments", 200),
    C("editor", "POST", "/flows/{NEWS}/segments", FWD, "unregistered object"),
    C("writer", "POST", "/flows/{NEWS}/segments", FWD, "unregistered object"),
    C("editor", "POST", "/flows/{NEWS}/segments", FWD, "O_SHARED"),
    # an object only unreadable Flows use is hidden from the caller: 404, as for an unknown one
    C("editor", "POST", "/flows/{NEWS}/segments", 404, "O_SPORT"),
    C("editor", "POST", "/flows/{NEWS}/segments", 404, "O_SPORT as init"),
    C("editor", "POST", "/flows/{NEWS}/segments", 404, "bulk with O_SPORT"),
    C("mixed", "POST", "/flows/{NEWS}/segments", FWD, "O_SPORT"),
    C("news", "POST", "/flows/{NEWS}/segments", 403, "unregistered object"),
    C("sport", "POST", "/flows/{NEWS}/segments", 404, "unregistered object"),
    C("editor", "POST", "/flows/{NEWS}/segments", 400, [{"object_id": 5, "timerange": "[9:0_10:0)"}]),
    C("editor", "POST", "/flows/{NEWS}/segments", 400, "just a string"),
    C("editor", "DELETE", "/flows/{NEW}/segments", 403, fresh=["news"]),
    C("chief", "DELETE", "/flows/{NEW}/segments", 204, fresh=["news"]),
    C("sport", "DELETE", "/flows/{NEW}/segments", 404, fresh=["news"]),
    C("editor", "POST", "/flows/{NEWS}/storage", 201, {"limit": 1}),
    C("writer", "POST", "/flows/{NEWS}/storage", 201, {"limit": 1}),
    C("news", "POST", "/flows/{NEWS}/storage", 403, {"limit": 1}),
    C("sport", "POST", "/flows/{NEWS}/storage", 404, {"limit": 1}),
    C("editor", "POST", "/flows/{NEWS}/storage", 400, [1]),
    # --- media objects --------------------------------------------------------------------------
    C("news", "GET", "/objects/{O_NEWS}", 200), C("news", "HEAD", "/objects/{O_NEWS}", 200),
    C("sport", "GET", "/objects/{O_NEWS}", 404), C("outsider", "GET", "/objects/{O_SHARED}", 404),
    C("news", "GET", "/objects/{O_SHARED}", 200), C("sport", "GET", "/objects/{O_SHARED}", 200),
    C("news", "GET", "/objects/{RAND}", 404), C("admin", "GET", "/objects/{O_SHARED}", 200),
    C("editor", "POST", "/objects/{O_NEWS}/instances", FWD, {"url": "http://127.0.0.1:9/x", "label": "copy"}),
    C("sport", "POST", "/objects/{O_NEWS}/instances", 404, {"url": "http://127.0.0.1:9/x", "label": "copy"}),
    C("news", "POST", "/objects/{O_NEWS}/instances", 403, {"url": "http://127.0.0.1:9/x", "label": "copy"}),
    C("editor", "POST", "/objects/{O_SHARED}/instances", 403, {"url": "http://127.0.0.1:9/x", "label": "copy"}),
    C("sport", "POST", "/objects/{O_SHARED}/instances", 403, {"url": "http://127.0.0.1:9/x", "label": "copy"}),
    C("admin", "POST", "/objects/{O_SHARED}/instances", FWD, {"url": "http://127.0.0.1:9/x", "label": "copy"}),
    C("editor", "POST", "/objects/{O_NEWS}/instances", 400, raw=b"{"),
    C("editor", "DELETE", "/objects/{O_NEWS}/instances?label=copy", FWD),
    C("news", "DELETE", "/objects/{O_NEWS}/instances?label=copy", 403),
    C("editor", "DELETE", "/objects/{RAND}/instances?label=copy", 404),
    # --- Sources ------------------------------------------------------------------------------------
    C("news", "GET", "/sources/{NEWS_SRC}", 200),
    C("news", "HEAD", "/sources/{NEWS_SRC}", 200),
    C("sport", "GET", "/sources/{NEWS_SRC}", 404), C("admin", "GET", "/sources/{NEWS_SRC}", 200),
    C("news", "GET", "/sources/{RAND}", 404),
    *[C("news", m, f"/sources/{{NEWS_SRC}}/{p}", FWD)
      for p in ("tags", "tags/genre", "label", "description") for m in ("GET", "HEAD")],
    *[C("sport", "GET", f"/sources/{{NEWS_SRC}}/{p}", 404) for p in ("tags", "tags/genre", "label", "description")],
    *[C("editor", m, f"/sources/{{NEWS_SRC}}/{p}", FWD, v)
      for p, v in (("label", "l"), ("description", "d"), ("tags/genre", "drama")) for m in ("PUT", "DELETE")],
    *[C("news", "PUT", f"/sources/{{NEWS_SRC}}/{p}", 403, "x")
      for p in ("label", "description", "tags/genre")],
    *[C("sport", "PUT", f"/sources/{{NEWS_SRC}}/{p}", 404, "x") for p in ("label", "description", "tags/genre")],
    C("editor", "PUT", "/sources/{NEWS_SRC}/tags/auth_classes", 403, ["news", "sport"]),
    C("editor", "DELETE", "/sources/{NEWS_SRC}/tags/auth_classes", 403),
    C("editor", "PUT", "/sources/{NEWS_SRC}/tags/auth_classes", FWD, ["news"]),
    C("chief", "PUT", "/sources/{NEW_SRC}/tags/auth_classes", 403, ["sport"], fresh=["news"]),
    C("chief", "PUT", "/sources/{NEW_SRC}/tags/auth_classes", 403, ["news", "sport"], fresh=["news"]),
    C("mover", "PUT", "/sources/{NEW_SRC}/tags/auth_classes", FWD, ["sport"], fresh=["news"]),
    C("chief", "DELETE", "/sources/{NEW_SRC}/tags/auth_classes", FWD, fresh=["news"]),
    C("editor", "PUT", "/sources/{NEWS_SRC}/label", 400, raw=b"\xff\xfe"),
    # --- listings -------------------------------------------------------------------------------------
    C("news", "GET", "/flows", 200), C("news", "HEAD", "/flows", 200), C("admin", "GET", "/flows", 200),
    C("news", "GET", "/sources", 200), C("news", "HEAD", "/sources", 200),
    C("news", "GET", "/flows?limit=0", 400), C("news", "GET", "/flows?limit=many", 400),
    C("news", "GET", "/flows?page=forged", 400),
    # --- webhooks ---------------------------------------------------------------------------------------
    C("news", "GET", "/service/webhooks", FWD), C("news", "HEAD", "/service/webhooks", FWD),
    C("news", "POST", "/service/webhooks", 403, "watch NEWS"),
    C("editor", "POST", "/service/webhooks", FWD, "watch NEWS"),
    C("editor", "POST", "/service/webhooks", 404, "watch SPORT"),
    C("editor", "POST", "/service/webhooks", 400, "watch everything"),
    C("editor", "POST", "/service/webhooks", 400, "source events by flow"),
    C("editor", "POST", "/service/webhooks", 400, "empty collected_by"),
    C("editor", "POST", "/service/webhooks", FWD, "flows of NEWS_SRC"),
    C("editor", "POST", "/service/webhooks", FWD, "members of a collection"),
    C("editor", "POST", "/service/webhooks", 403, "classed sport"),
    C("admin", "POST", "/service/webhooks", FWD, "watch everything"),
    C("editor", "POST", "/service/webhooks", 400, raw=b'"hook"'),
    C("editor", "POST", "/service/webhooks", 400, {"url": "http://127.0.0.1:9/", "events": "flows/created"}),
    C("news", "GET", "/service/webhooks/{RAND}", 404), C("news", "HEAD", "/service/webhooks/{RAND}", 404),
    C("admin", "GET", "/service/webhooks/{RAND}", FWD),
    C("editor", "PUT", "/service/webhooks/{RAND}", 404, "watch NEWS"),
    C("admin", "PUT", "/service/webhooks/{RAND}", FWD, "watch NEWS"),
    C("chief", "DELETE", "/service/webhooks/{RAND}", 404), C("admin", "DELETE", "/service/webhooks/{RAND}", FWD),
]


def build_body(world: World, case: Case, rand: str, new: str | None, new_src: str | None) -> Any:
    """Named bodies are built here, where the world's ids are known."""
    ids = world.ids
    body = case.body
    if not isinstance(body, str) or case.path.endswith(("/genre", "/auth_classes", "/auth%5Fclasses", "/label",
                                                        "/description")):
        return body
    if case.path.startswith("/flows/{NEW}") and case.method == "PUT":
        assert new is not None and new_src is not None
        classes = {"same": ["news"], "sport too": ["news", "sport"], "sport only": ["sport"], "untagged": None}[body]
        return video_flow(new, new_src, classes)
    if case.path == "/flows/{RAND}":
        source = ids["SPORT_SRC"] if "on SPORT_SRC" in body else new_id()
        if body == "bad auth_classes":
            return video_flow(rand, source, None, tags={"auth_classes": 7})
        if body == "bad tags":
            return video_flow(rand, source, None, tags={"a": {"b": 1}})
        classes = ["news", "sport"] if "news and sport" in body else ["sport"] if "new sport" in body else \
            None if "untagged" in body else ["news"]
        extra = {}
        if "collecting" in body:
            extra["flow_collection"] = [{"id": ids["BOTH" if "BOTH" in body else "SPORT"], "role": "part"}]
        return video_flow(rand, source, classes, **extra)
    if case.path.endswith("/flow_collection"):
        return [{"id": ids["BOTH" if "BOTH" in body else "SPORT"], "role": "part"}]
    if case.path.endswith("/segments"):
        seg = {"timerange": f"[{10 + uuid.uuid4().int % 1000}:0_{11 + uuid.uuid4().int % 1000}:0)"}
        if body == "unregistered object":
            return {**seg, **ELSEWHERE, "object_id": "never-" + rand}
        if body == "O_SHARED":
            return {**seg, "object_id": ids["O_SHARED"]}
        if body == "O_SPORT":
            return {**seg, "object_id": ids["O_SPORT"]}
        if body == "O_SPORT as init":
            return {**seg, **ELSEWHERE, "object_id": "never-" + rand, "init_object_id": ids["O_SPORT"]}
        if body == "bulk with O_SPORT":
            return [{**seg, **ELSEWHERE, "object_id": "never-" + rand}, {**seg, "object_id": ids["O_SPORT"]}]
        return body
    if case.path.startswith("/service/webhooks"):
        hook: dict[str, Any] = dict(WEBHOOK)
        if case.method == "PUT":
            hook |= {"id": rand, "status": "created"}
        if body == "watch NEWS":
            hook["flow_ids"] = [ids["NEWS"]]
        elif body == "watch SPORT":
            hook["flow_ids"] = [ids["SPORT"]]
        elif body == "source events by flow":
            hook |= {"flow_ids": [ids["NEWS"]], "events": ["sources/updated"]}
        elif body == "empty collected_by":
            hook |= {"flow_collected_by_ids": []}
        elif body == "flows of NEWS_SRC":
            hook["source_ids"] = [ids["NEWS_SRC"]]
        elif body == "members of a collection":
            hook["flow_collected_by_ids"] = [ids["COLLECTION"]]
        elif body == "classed sport":
            hook |= {"flow_ids": [ids["NEWS"]], "tags": {"auth_classes": ["sport"]}}
        return hook
    return body


@pytest.fixture(scope="module")
def collection(world: World) -> str:
    """A news Flow collecting NEWS (readable by news callers) and SPORT (not); its news Source
    collects their Sources likewise."""
    cid, csrc = new_id(), new_id()
    answer = world.env.store_call("PUT", f"/flows/{cid}", {
        "id": cid, "source_id": csrc, "format": "urn:x-nmos:format:multi", "tags": {"auth_classes": ["news"]},
        "flow_collection": [{"id": world.ids["NEWS"], "role": "v"}, {"id": world.ids["SPORT"], "role": "s"}],
    })
    assert answer.status == 201, answer.body
    answer = world.env.store_call("PUT", f"/sources/{csrc}/tags/auth_classes", ["news"])
    assert answer.status == 204, answer.body
    world.ids["COLLECTION"], world.ids["COLLECTION_SRC"] = cid, csrc
    return cid


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision(world: World, collection: str, case: Case) -> None:
    env = world.env
    rand = new_id()
    new = new_src = None
    if case.fresh is not None or "{NEW}" in case.path:
        new, new_src = new_id(), new_id()
        classes = case.fresh
        created = env.store_call("PUT", f"/flows/{new}", video_flow(new, new_src, classes))
        assert created.status == 201, created.body
        if classes is not None:  # its Source gets the same classes, as the proxy gives a new one
            tagged = env.store_call("PUT", f"/sources/{new_src}/tags/auth_classes", classes)
            assert tagged.status == 204, tagged.body
    values = {**world.ids, "RAND": rand, "NEW": new or "", "NEW_SRC": new_src or ""}
    path = case.path
    for key, value in values.items():
        path = path.replace("{" + key + "}", value)
    body = build_body(world, case, rand, new, new_src)
    expect = case.expect

    env.recorder.clear()
    if case.raw is not None:
        answer = env.call(case.caller, case.method, path, data=case.raw, headers={"Content-Type": "application/json"})
    else:
        answer = env.call(case.caller, case.method, path, json_body=body)

    raw_path = path.split("?")[0]
    seen_methods = {case.method} | ({"GET"} if case.method == "HEAD" else set())
    reached = any(s.method in seen_methods and s.raw_path == raw_path for s in env.recorder.seen)
    if expect == FWD or (isinstance(expect, int) and expect < 300):
        assert reached, f"expected the request to reach the store; got {answer.status} {answer.body[:300]!r}"
        if isinstance(expect, int):
            assert answer.status == expect, answer.body[:500]
    else:
        assert answer.status == expect, answer.body[:500]
        if case.method != "HEAD":
            assert set(answer.json()) == {"type", "summary", "time"}
        assert not env.recorder.writes(), f"a refused request changed the store: {env.recorder.writes()}"
        if case.method not in ("GET", "HEAD"):
            assert not reached
        if case.method == "HEAD":
            assert answer.body == b""


def test_filtered_object_lists_only_readable_flows(world: World) -> None:
    env, ids = world.env, world.ids
    as_news = env.call("news", "GET", f"/objects/{ids['O_SHARED']}").json()
    assert as_news["referenced_by_flows"] == [ids["NEWS"]]
    as_sport = env.call("sport", "GET", f"/objects/{ids['O_SHARED']}").json()
    assert as_sport["referenced_by_flows"] == [ids["SPORT"]]
    assert as_sport.get("first_referenced_by_flow") in (None, ids["SPORT"])
    if "first_referenced_by_flow" in as_news:
        assert as_news["first_referenced_by_flow"] == ids["NEWS"]
    as_admin = env.call("admin", "GET", f"/objects/{ids['O_SHARED']}").json()
    assert sorted(as_admin["referenced_by_flows"]) == sorted([ids["NEWS"], ids["SPORT"]])


def test_flow_listing_holds_only_readable_flows(world: World) -> None:
    env, ids = world.env, world.ids
    listed = {f["id"] for f in env.call("news", "GET", "/flows?limit=1000").json()}
    assert {ids["NEWS"], ids["BOTH"], ids["STR"]} <= listed
    assert not {ids["SPORT"], ids["NONE"]} & listed
    everything = {f["id"] for f in env.call("admin", "GET", "/flows?limit=1000").json()}
    assert {ids["SPORT"], ids["NONE"]} <= everything


def test_webhook_is_flattened_to_readable_ids_and_classed(world: World, collection: str) -> None:
    env, ids = world.env, world.ids
    env.recorder.clear()
    hook = {**WEBHOOK, "flow_collected_by_ids": [collection]}
    env.call("editor", "POST", "/service/webhooks", json_body=hook)
    sent = [s for s in env.recorder.seen if s.method == "POST" and s.raw_path == "/service/webhooks"]
    assert len(sent) == 1
    body = sent[0].json()
    assert body["flow_ids"] == [ids["NEWS"]], "only the readable member of the collection"
    assert "flow_collected_by_ids" not in body
    # Without auth_classes a webhook gets every tag that grants its creator write: under auto
    # the editor's news_write group is such a tag as well as the class news.
    expected = ["news"] if world.model is ClassModel.CLASS else ["news", "news_write"]
    assert body["tags"]["auth_classes"] == expected
    assert body["api_key_value"] == "v"


def test_new_flow_on_new_source_gives_the_source_its_classes(world: World) -> None:
    env = world.env
    flow_id, source_id = new_id(), new_id()
    env.recorder.clear()
    answer = env.call("editor", "PUT", f"/flows/{flow_id}", json_body=video_flow(flow_id, source_id, ["news"]))
    assert answer.status == 201
    puts = [s for s in env.recorder.seen if s.method == "PUT" and s.raw_path == f"/sources/{source_id}/tags/auth_classes"]
    assert len(puts) == 1 and puts[0].json() == ["news"]
    assert env.call("news", "GET", f"/sources/{source_id}").status == 200
    assert env.call("sport", "GET", f"/sources/{source_id}").status == 404


def test_the_store_sees_the_proxy_not_the_caller(world: World) -> None:
    env = world.env
    env.recorder.clear()
    assert env.call("news", "GET", f"/flows/{world.ids['NEWS']}/segments").status == 200
    assert env.recorder.seen and {s.subject for s in env.recorder.seen} == {PROXY_CLIENT["client_id"]}


def test_pass_through_mode_sends_the_callers_token(world: World) -> None:
    env = start_env(world.env.store, pass_through_token=True)
    try:
        answer = env.call("news", "GET", f"/flows/{world.ids['NEWS']}")
        assert answer.status == 200
        assert {s.subject for s in env.recorder.seen} == {"news"}
        # The store's own coarse scopes still apply to the caller's token.
        assert env.call("readscope", "PUT", f"/flows/{world.ids['NEWS']}/label", json_body="x").status == 403
        assert not env.recorder.writes()
    finally:
        env.close()


@pytest.mark.parametrize(
    ("hidden", "template"),
    [("SPORT", "/flows/{}"), ("SPORT", "/flows/{}/segments"), ("SPORT", "/flows/{}/label"),
     ("SPORT_SRC", "/sources/{}"), ("O_SPORT", "/objects/{}"), ("SPORT", "/flows/{}/tags/genre")],
)
def test_hidden_and_unknown_resources_answer_alike(world: World, hidden: str, template: str) -> None:
    env = world.env
    unknown = new_id()
    hidden_answer = env.call("news", "GET", template.format(world.ids[hidden])).json()
    unknown_answer = env.call("news", "GET", template.format(unknown)).json()
    assert hidden_answer["type"] == unknown_answer["type"] == "NotFound"
    assert hidden_answer["summary"].replace(world.ids[hidden], "ID") == unknown_answer["summary"].replace(unknown, "ID")


@pytest.mark.parametrize(
    ("caller", "method", "path", "body", "calls"),
    [
        ("news", "GET", "/flows/{STR}", None, 1),  # the look-up is the answer (STR is in no collection)
        ("admin", "GET", "/flows/{NEWS}", None, 1),
        ("news", "GET", "/flows/{NEWS}/segments", None, 2),
        ("admin", "GET", "/flows/{NEWS}/segments", None, 1),
        ("editor", "PUT", "/flows/{NEWS}/tags/genre", "news", 2),
        ("editor", "POST", "/flows/{NEWS}/storage", {"limit": 1}, 2),
        ("sport", "PUT", "/flows/{NEWS}/tags/genre", "news", 1),  # refused after one look-up
        ("editor", "POST", "/flows/{NEWS}/segments", "three segments, one object", 3),
    ],
)
def test_decisions_cost_few_upstream_calls(world: World, caller: str, method: str, path: str, body: Any,
                                           calls: int) -> None:
    env = world.env
    if body == "three segments, one object":
        body = [{**ELSEWHERE, "object_id": "never-" + new_id(), "timerange": f"[{t}:0_{t + 1}:0)"} for t in (500, 501, 502)]
        body[1]["object_id"] = body[2]["object_id"] = body[0]["object_id"]
    env.recorder.clear()
    env.call(caller, method, path.replace("{NEWS}", world.ids["NEWS"]).replace("{STR}", world.ids["STR"]),
             json_body=body)
    assert len(env.recorder.seen) == calls, [(s.method, s.raw_path) for s in env.recorder.seen]


def member_ids(value: Any) -> list[str]:
    return [m["id"] if isinstance(m, dict) else m for m in value or []]


def test_collections_name_only_what_the_caller_can_read(world: World, collection: str) -> None:
    env, ids = world.env, world.ids
    # the store itself links all of them, so each check below could fail
    assert member_ids(env.call("admin", "GET", f"/flows/{collection}").json()["flow_collection"]) == [
        ids["NEWS"], ids["SPORT"]]
    assert collection in env.call("admin", "GET", f"/flows/{ids['SPORT']}").json()["collected_by"]
    assert ids["SPORT_SRC"] in member_ids(
        env.call("admin", "GET", f"/sources/{ids['COLLECTION_SRC']}").json()["source_collection"])
    assert ids["COLLECTION_SRC"] in env.call("admin", "GET", f"/sources/{ids['SPORT_SRC']}").json()["collected_by"]

    as_news = env.call("news", "GET", f"/flows/{collection}").json()
    assert as_news["flow_collection"] == [{"id": ids["NEWS"], "role": "v"}]
    assert collection in env.call("news", "GET", f"/flows/{ids['NEWS']}").json()["collected_by"]
    members = env.call("news", "GET", f"/flows/{collection}/flow_collection")
    assert members.status == 200 and members.json() == [{"id": ids["NEWS"], "role": "v"}]
    source = env.call("news", "GET", f"/sources/{ids['COLLECTION_SRC']}").json()
    assert member_ids(source["source_collection"]) == [ids["NEWS_SRC"]]
    assert ids["COLLECTION_SRC"] in env.call("news", "GET", f"/sources/{ids['NEWS_SRC']}").json()["collected_by"]

    # sport reads SPORT, collected only by a news Flow: nothing says it is collected at all
    assert "collected_by" not in env.call("sport", "GET", f"/flows/{ids['SPORT']}").json()
    assert "collected_by" not in env.call("sport", "GET", f"/sources/{ids['SPORT_SRC']}").json()

    for caller, hidden in (("news", [ids["SPORT"], ids["SPORT_SRC"]]),
                           ("sport", [collection, ids["COLLECTION_SRC"]])):
        for listing in ("/flows?limit=1000", "/sources?limit=1000"):
            answer = env.call(caller, "GET", listing)
            assert answer.status == 200
            assert not [h for h in hidden if h in answer.body.decode()], (caller, listing)
    listed = {f["id"]: f for f in env.call("news", "GET", "/flows?limit=1000").json()}
    assert listed[collection]["flow_collection"] == [{"id": ids["NEWS"], "role": "v"}]


def test_a_collection_of_only_hidden_flows_looks_like_none(world: World) -> None:
    env, ids = world.env, world.ids
    cid = new_id()
    answer = env.store_call("PUT", f"/flows/{cid}", {
        "id": cid, "source_id": new_id(), "format": "urn:x-nmos:format:multi", "tags": {"auth_classes": ["news"]},
        "flow_collection": [{"id": ids["SPORT"], "role": "s"}]})
    assert answer.status == 201, answer.body
    assert "flow_collection" not in env.call("news", "GET", f"/flows/{cid}").json()
    hidden = env.call("news", "GET", f"/flows/{cid}/flow_collection")
    none = env.call("news", "GET", f"/flows/{ids['STR']}/flow_collection")  # STR collects nothing
    assert hidden.status == none.status == 404
    assert hidden.json()["summary"] == none.json()["summary"]
    assert env.call("news", "HEAD", f"/flows/{cid}/flow_collection").status == 404
    assert ids["SPORT"] not in hidden.body.decode()


def test_reusing_a_hidden_object_answers_like_an_unknown_object(world: World) -> None:
    env, ids = world.env, world.ids
    unknown = new_id()
    env.recorder.clear()
    hidden = env.call("editor", "POST", f"/flows/{ids['NEWS']}/segments",
                      json_body={"object_id": ids["O_SPORT"], "timerange": "[700:0_701:0)"})
    assert not env.recorder.writes()
    nothing = env.call("editor", "GET", f"/objects/{unknown}")
    assert hidden.status == nothing.status == 404
    assert hidden.json()["type"] == nothing.json()["type"]
    assert hidden.json()["summary"].replace(ids["O_SPORT"], "ID") == nothing.json()["summary"].replace(unknown, "ID")


def test_segment_posts_name_a_bounded_number_of_objects(world: World) -> None:
    env = start_env(world.env.store, max_segment_objects=2)
    try:
        flow_id = world.ids["NEWS"]

        def segments(objects: list[str], start: int) -> list[dict[str, str]]:
            return [{**ELSEWHERE, "object_id": o, "timerange": f"[{start + n}:0_{start + n + 1}:0)"}
                    for n, o in enumerate(objects)]

        three = ["never-" + new_id() for _ in range(3)]
        answer = env.call("editor", "POST", f"/flows/{flow_id}/segments", json_body=segments(three, 5000))
        assert answer.status == 400, answer.body
        assert set(answer.json()) == {"type", "summary", "time"}
        assert not [s for s in env.recorder.seen if s.raw_path.startswith("/objects/")], "no object look-ups"
        assert not env.recorder.writes()
        # two are within the bound
        answer = env.call("editor", "POST", f"/flows/{flow_id}/segments", json_body=segments(three[:2], 5010))
        assert answer.status == 201, answer.body
        assert len([s for s in env.recorder.seen if s.raw_path.startswith("/objects/")]) == 2
        # admins cost no look-ups, so are not bounded
        answer = env.call("admin", "POST", f"/flows/{flow_id}/segments",
                          json_body=segments(["never-" + new_id() for _ in range(3)], 5020))
        assert answer.status == 201, answer.body
    finally:
        env.close()
