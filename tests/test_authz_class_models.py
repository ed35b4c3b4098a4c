"""The three ``--class-model`` settings, end to end: one real local store holding Flows tagged
the BBC example proxy's way (``news_write``, ``news_read``, ``sport_read`` ...) and Flows tagged
this proxy's way (``news``, ``sport``), and one proxy per model in front of it.

``GRANTS`` is the decision table, written out by hand for each model: what each caller may do
to each Flow. ``group`` must give exactly the example proxy's decisions (a tag grants the
permission its name ends with to the group of exactly that name), ``class`` this proxy's own,
and ``auto`` the first for tags ending in read/write/delete and the second for the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from authz_support import PROXY_CLIENT, ProxyEnv, client, new_id, start_env, video_flow

from authz_proxy.classes import ClassModel
from authz_proxy.rules import Caller, Perm, may_read_some, permissions, writable_classes
from tests.conftest import start_store

GROUP, AUTO, CLASS = ClassModel.GROUP, ClassModel.AUTO, ClassModel.CLASS

CALLERS: dict[str, list[str]] = {
    "admin": ["admin"],
    "newswriter": ["news_write"],
    "newsreader": ["news_read"],
    "sportreader": ["sport_read"],
    "newsdesk": ["news_read", "news_write", "news_delete"],
    "threadgroup": ["thread"],
    "threadreader": ["thread_read"],
    "outsider": [],
}
# Only for changing auth_classes: all three news permissions under class and both group-style
# news tags, plus write for sport either way.
OWNER = ["news_read", "news_write", "news_delete", "sport_write"]
CLIENTS = [PROXY_CLIENT, client("owner", OWNER), *(client(name, groups) for name, groups in CALLERS.items())]

# Flow name -> its auth_classes tag. The first six are tagged for the example proxy, the last
# three for this one; NEAR holds tags that resemble the callers' groups without being one.
FLOWS: dict[str, list[str] | str] = {
    "W": ["news_write"],
    "R": ["news_read"],
    "D": ["news_delete"],
    "RW": ["news_read", "news_write"],
    "SR": ["sport_read"],
    "STR": "news_read, sport_read",
    "NEAR": ["all_news_read", "news_reader", "read_news", "newsread_x"],
    "NEWS": ["news"],
    "SPORT": ["sport"],
    "THREAD": ["thread"],
}

# model -> caller -> {Flow: permissions}; a Flow left out grants that caller nothing.
GRANTS: dict[ClassModel, dict[str, dict[str, str]]] = {
    GROUP: {
        "newswriter": {"W": "w", "RW": "w"},
        "newsreader": {"R": "r", "RW": "r", "STR": "r"},
        "sportreader": {"SR": "r", "STR": "r"},
        "newsdesk": {"W": "w", "R": "r", "D": "d", "RW": "rw", "STR": "r"},
        "threadgroup": {"THREAD": "r"},  # tag "thread" ends in "read"
        "threadreader": {},
        "outsider": {},
    },
    CLASS: {
        "newswriter": {"NEWS": "w"},
        "newsreader": {"NEWS": "r"},
        "sportreader": {"SPORT": "r"},
        "newsdesk": {"NEWS": "rwd"},
        "threadgroup": {},
        "threadreader": {"THREAD": "r"},
        "outsider": {},
    },
    AUTO: {
        "newswriter": {"W": "w", "RW": "w", "NEWS": "w"},
        "newsreader": {"R": "r", "RW": "r", "STR": "r", "NEWS": "r"},
        "sportreader": {"SR": "r", "STR": "r", "SPORT": "r"},
        "newsdesk": {"W": "w", "R": "r", "D": "d", "RW": "rw", "STR": "r", "NEWS": "rwd"},
        # the documented price of auto: a class of ours ending in "read" is read the group way
        "threadgroup": {"THREAD": "r"},
        "threadreader": {},
        "outsider": {},
    },
}
for _table in GRANTS.values():
    _table["admin"] = dict.fromkeys(FLOWS, "rwd")


def grants(model: ClassModel, caller: str, flow: str) -> str:
    return GRANTS[model][caller].get(flow, "")


def test_the_group_table_is_the_example_proxys_rule() -> None:
    """A cross-check of the hand-written ``group`` table against the example proxy's rule
    stated in the plainest terms, so a slip in the table cannot pass unnoticed."""
    for caller, groups in CALLERS.items():
        if caller == "admin":
            continue
        for flow, tag in FLOWS.items():
            tags = [t.strip() for t in tag.split(",")] if isinstance(tag, str) else tag
            expected = {word[0] for t in tags if t in groups for word in ("read", "write", "delete")
                        if t.endswith(word)}
            assert set(grants(GROUP, caller, flow)) == expected, (caller, flow)


@dataclass
class Models:
    envs: dict[ClassModel, ProxyEnv]
    ids: dict[str, str]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Models]:
    store = start_store(tmp_path_factory.mktemp("authz-class-models") / "data", clients=CLIENTS)
    envs = {model: start_env(store, class_model=model) for model in ClassModel}
    some = envs[CLASS]
    ids: dict[str, str] = {}
    for name, tag in FLOWS.items():
        ids[name], ids[name + "_SRC"] = new_id(), new_id()
        answer = some.store_call("PUT", f"/flows/{ids[name]}", video_flow(ids[name], ids[name + "_SRC"], tag))
        assert answer.status == 201, answer.body
        answer = some.store_call("PUT", f"/sources/{ids[name + '_SRC']}/tags/auth_classes", tag)
        assert answer.status == 204, answer.body
    yield Models(envs, ids)
    for env in envs.values():
        env.close()
    store.stop()


def outcome(granted: str, needed: str, allowed: int) -> int:
    """What the proxy answers: the store's status when allowed, else 403 for a caller with some
    permission on the Flow and 404 for one with none."""
    if needed in granted:
        return allowed
    return 403 if granted else 404


@pytest.mark.parametrize("caller", [c for c in CALLERS if c != "admin"] + ["admin"])
@pytest.mark.parametrize("model", list(ClassModel), ids=str)
def test_each_caller_gets_exactly_the_models_decisions(models: Models, model: ClassModel, caller: str) -> None:
    env, ids = models.envs[model], models.ids
    wrong = []
    for flow in FLOWS:
        granted = grants(model, caller, flow)
        fid = ids[flow]
        for needed, method, path, body, allowed in (
            ("r", "GET", f"/flows/{fid}", None, 200),
            ("r", "GET", f"/sources/{ids[flow + '_SRC']}", None, 200),
            ("w", "PUT", f"/flows/{fid}/label", "relabelled", 204),
            ("d", "DELETE", f"/flows/{fid}/segments", None, 204),
        ):
            env.recorder.clear()
            status = env.call(caller, method, path, json_body=body).status
            expected = outcome(granted, needed, allowed)
            if status != expected:
                wrong.append((flow, method, path, status, expected))
            if expected >= 400 and env.recorder.writes():
                wrong.append((flow, method, path, "refused, yet the store saw a write"))
    assert not wrong


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("model", list(ClassModel), ids=str)
def test_listings_hold_exactly_the_readable_items(models: Models, model: ClassModel, caller: str) -> None:
    env, ids = models.envs[model], models.ids
    ours = {ids[f]: f for f in FLOWS} | {ids[f + "_SRC"]: f for f in FLOWS}
    readable = {f for f in FLOWS if "r" in grants(model, caller, f)}
    for listing in ("/flows", "/sources"):
        seen: set[str] = set()
        path = f"{listing}?limit=3"  # small pages, so the filter also runs across page boundaries
        while True:
            answer = env.call(caller, "GET", path)
            assert answer.status == 200, answer.body
            seen |= {ours[item["id"]] for item in answer.json() if item["id"] in ours}
            if "X-Paging-NextKey" not in answer.headers:
                break
            path = f"{listing}?limit=3&page={answer.headers['X-Paging-NextKey']}"
        assert seen == readable, listing


# model, auth_classes of the new Flow (None: no tag), whether newswriter [news_write] may create it
CREATIONS = [
    (GROUP, ["news_write"], True),
    (GROUP, ["news"], False),
    (GROUP, ["news_read"], False),
    (GROUP, ["news_write", "news"], False),
    (GROUP, None, False),
    (CLASS, ["news"], True),
    (CLASS, ["news_write"], False),
    (CLASS, ["news_read"], False),
    (CLASS, None, False),
    (AUTO, ["news_write"], True),
    (AUTO, ["news"], True),
    (AUTO, ["news_write", "news"], True),
    (AUTO, ["news_read"], False),
    (AUTO, ["newsdesk_write"], False),
    (AUTO, None, False),
]


@pytest.mark.parametrize(("model", "tag", "allowed"), CREATIONS, ids=str)
def test_new_flows_carry_only_tags_that_grant_their_creator_write(models: Models, model: ClassModel,
                                                                  tag: list[str] | None, allowed: bool) -> None:
    env = models.envs[model]
    fid = new_id()
    env.recorder.clear()
    answer = env.call("newswriter", "PUT", f"/flows/{fid}", json_body=video_flow(fid, new_id(), tag))
    if not allowed:
        assert answer.status == 403, answer.body
        assert not env.recorder.writes()
        return
    assert answer.status == 201, answer.body
    # The creator may now write it, and still not read it: news_write grants no read in any model.
    assert env.call("newswriter", "PUT", f"/flows/{fid}/label", json_body="mine").status == 204
    assert env.call("newswriter", "GET", f"/flows/{fid}").status == 403


# model, the Flow's tag, its new tag, and the answer to owner's change (204: made)
ORIGINAL_FULL = ["news_read", "news_write", "news_delete"]
CHANGES = [
    (GROUP, ORIGINAL_FULL, [*ORIGINAL_FULL, "sport_write"], 204),
    (GROUP, ORIGINAL_FULL, [*ORIGINAL_FULL, "sport_read"], 403),  # sport_read would grant the owner nothing
    (GROUP, ORIGINAL_FULL, [*ORIGINAL_FULL, "sport"], 403),
    (GROUP, ORIGINAL_FULL, ["news_read"], 204),  # only removing
    (GROUP, ["news_read", "news_write"], ORIGINAL_FULL, 403),  # no delete on it
    (GROUP, ["news"], ["news", "sport_write"], 404),  # no permission on it at all
    (CLASS, ["news"], ["news", "sport"], 204),
    (CLASS, ["news"], ["news", "sport_write"], 403),
    (CLASS, ["news"], ["news", "weather"], 403),
    (CLASS, ORIGINAL_FULL, ["news"], 404),  # these tags grant nothing under class
    (AUTO, ["news"], ["news", "sport"], 204),
    (AUTO, ["news"], ["news", "sport_write"], 204),
    (AUTO, ["news"], ["news", "sport_read"], 403),
    (AUTO, ORIGINAL_FULL, ["sport"], 204),
    (AUTO, ORIGINAL_FULL, [*ORIGINAL_FULL, "weather"], 403),
]


@pytest.mark.parametrize(("model", "old", "new", "status"), CHANGES, ids=str)
def test_changing_auth_classes_follows_the_model(models: Models, model: ClassModel, old: list[str], new: list[str],
                                                  status: int) -> None:
    env = models.envs[model]
    fid = new_id()
    assert env.store_call("PUT", f"/flows/{fid}", video_flow(fid, new_id(), old)).status == 201
    env.recorder.clear()
    answer = env.call("owner", "PUT", f"/flows/{fid}/tags/auth_classes", json_body=new)
    assert answer.status == status, answer.body
    stored = env.store_call("GET", f"/flows/{fid}/tags/auth_classes").json()
    assert stored == (new if status == 204 else old)
    if status != 204:
        assert not env.recorder.writes()


# --- the same rules as pure functions ---------------------------------------------------------


def caller(model: ClassModel, *groups: str, scopes: list[str] | None = None) -> Caller:
    return Caller("someone", frozenset(groups), frozenset(scopes) if scopes is not None else None, model)


R, W, D = Perm.READ, Perm.WRITE, Perm.DELETE


@pytest.mark.parametrize(
    ("model", "groups", "tags", "granted"),
    [
        (GROUP, ["news_write"], ["news_write"], {W}),
        (GROUP, ["news_read", "news_write"], ["news_write"], {W}),  # the tag decides, not the caller's other groups
        (GROUP, ["news_read"], ["news"], set()),
        (GROUP, ["read"], ["read"], {R}),  # a plain suffix: the whole name may be the word
        (GROUP, ["news_read"], ["all_news_read"], set()),
        (GROUP, ["newsread"], ["newsread"], {R}),  # no underscore needed
        (CLASS, ["news_write"], ["news_write"], set()),
        (CLASS, ["news_write"], ["news"], {W}),
        (AUTO, ["news_write"], ["news", "news_write"], {W}),
        (AUTO, ["news_read", "news_delete"], ["news"], {R, D}),
        (AUTO, ["thread_read"], ["thread"], set()),
        (AUTO, ["thread"], ["thread"], {R}),
        (AUTO, ["admin"], [], {R, W, D}),
        (GROUP, ["admin"], ["news"], {R, W, D}),
    ],
    ids=str,
)
def test_permissions_under_each_model(model: ClassModel, groups: list[str], tags: list[str], granted: set[Perm]) -> None:
    assert permissions(caller(model, *groups), tags) == granted


def test_scopes_still_limit_what_tags_grant() -> None:
    assert permissions(caller(GROUP, "news_read", scopes=["tams-api/write"]), ["news_read"]) == set()
    assert permissions(caller(AUTO, "news_write", scopes=["tams-api/write"]), ["news_write"]) == {W}
    assert writable_classes(caller(GROUP, "news_write", scopes=["tams-api/read"])) == set()
    assert not may_read_some(caller(GROUP, "news_read", scopes=["tams-api/write"]))


@pytest.mark.parametrize(
    ("model", "groups", "writable"),
    [
        (GROUP, ["news_read", "news_write", "news_delete", "promo_write"], {"news_write", "promo_write"}),
        (CLASS, ["news_read", "news_write", "news_delete", "promo_write"], {"news", "promo"}),
        (AUTO, ["news_read", "news_write"], {"news", "news_write"}),
        # under auto the class "thread" is read the group way, so thread_write cannot write into it
        (AUTO, ["thread_write"], {"thread_write"}),
        (CLASS, ["thread_write"], {"thread"}),
        (GROUP, ["news_read"], set()),
    ],
    ids=str,
)
def test_writable_classes_are_the_tags_that_grant_write(model: ClassModel, groups: list[str],
                                                        writable: set[str]) -> None:
    who = caller(model, *groups)
    assert writable_classes(who) == writable
    for tag in writable:
        assert W in permissions(who, [tag])


@pytest.mark.parametrize(
    ("model", "groups", "some"),
    [
        (GROUP, ["news_write", "news_delete"], False),
        (GROUP, ["news_read"], True),
        (GROUP, ["thread"], True),
        (CLASS, ["thread"], False),
        (CLASS, ["news_read"], True),
        (AUTO, ["news_write"], False),
        (AUTO, ["_read"], True),  # the tag "_read" grants the group "_read" read
        (CLASS, ["_read"], False),
    ],
    ids=str,
)
def test_who_may_read_anything_at_all(model: ClassModel, groups: list[str], some: bool) -> None:
    assert may_read_some(caller(model, *groups)) is some
