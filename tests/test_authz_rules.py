"""The proxy's route table and permission decisions, as pure functions (no servers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from authz_proxy.errors import MethodNotAllowed, NotFound
from authz_proxy.listing import Cursor, CursorCodec
from authz_proxy.rules import (
    ALL_PERMS,
    ROUTES,
    Caller,
    ClassModel,
    Kind,
    Perm,
    Verdict,
    class_change_needs,
    decide,
    match_route,
    may_create_with,
    parse_auth_classes,
    permissions,
    resource_classes,
    upstream_path,
)

SPEC = Path(__file__).resolve().parent.parent / "tams-api" / "TimeAddressableMediaStore.yaml"
METHODS = ("get", "head", "put", "post", "delete", "patch", "options")
R, W, D = Perm.READ, Perm.WRITE, Perm.DELETE


def spec_routes() -> set[tuple[str, str]]:
    document = yaml.safe_load(SPEC.read_text())
    return {(path, method.upper()) for path, item in document["paths"].items() for method in item if method in METHODS}


def test_every_spec_route_is_classified_and_nothing_else() -> None:
    table = {(rule.template, rule.method) for rule in ROUTES}
    assert len(table) == len(ROUTES), "a route is classified twice"
    assert table == spec_routes()


def test_every_route_names_what_it_decides_on() -> None:
    for rule in ROUTES:
        if rule.kind in (Kind.OPEN, Kind.ADMIN):
            assert rule.perm is None, rule
        else:
            assert rule.perm is not None, rule
        if rule.id_param is not None:
            assert "{" + rule.id_param + "}" in rule.template, rule


def test_reads_need_read_and_changes_need_more() -> None:
    for rule in ROUTES:
        if rule.perm is None:
            continue
        if rule.method in ("GET", "HEAD") and rule.kind is not Kind.DELETE_REQUEST_GET:
            assert rule.perm is R, rule
        if rule.method in ("PUT", "POST"):
            assert rule.perm is W, rule
        if rule.method == "DELETE":
            assert rule.perm in (W, D), rule
    assert match_route("DELETE", "/flows/x").rule.perm is D
    assert match_route("DELETE", "/flows/x/segments").rule.perm is D
    assert match_route("DELETE", "/flows/x/label").rule.perm is W


@pytest.mark.parametrize(
    ("method", "path", "template", "params"),
    [
        ("GET", "/", "/", {}),
        ("HEAD", "/service", "/service", {}),
        ("GET", "/flows/abc/segments", "/flows/{flowId}/segments", {"flowId": "abc"}),
        ("PUT", "/sources/s1/tags/auth%5Fclasses", "/sources/{sourceId}/tags/{name}",
         {"sourceId": "s1", "name": "auth_classes"}),
        ("GET", "/objects/a%2Fb", "/objects/{objectId}", {"objectId": "a/b"}),
        ("POST", "/objects/a%2Fb/instances", "/objects/{objectId}/instances", {"objectId": "a/b"}),
        ("GET", "/flow-delete-requests/r1", "/flow-delete-requests/{request-id}", {"request-id": "r1"}),
        ("GET", "/fl%6Fws", "/flows", {}),
    ],
)
def test_match_route_decodes_each_segment(method: str, path: str, template: str, params: dict[str, str]) -> None:
    match = match_route(method, path)
    assert match.rule.template == template
    assert match.params == params


@pytest.mark.parametrize(
    "path",
    ["/nope", "/flows/", "//flows", "/flows//segments", "/flows/./segments", "/flows/../service",
     "/flows/%2E%2E", "/objects/..", "flows", "/flows/a/b/c/d", "/flows/%ff", "/flows/a%00b", "/objects-data/x"],
)
def test_paths_outside_the_api_are_not_found(path: str) -> None:
    with pytest.raises(NotFound):
        match_route("GET", path)


@pytest.mark.parametrize(("method", "path"), [("POST", "/flows"), ("PUT", "/sources/x"), ("PATCH", "/flows/x"),
                                             ("OPTIONS", "/"), ("DELETE", "/flows/x/read_only"),
                                             ("GET", "/flows/x/storage")])
def test_methods_the_api_does_not_define_are_refused(method: str, path: str) -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        match_route(method, path)
    assert method not in caught.value.allowed
    assert caught.value.headers()["Allow"]


def test_upstream_path_reencodes_parameters() -> None:
    assert upstream_path("/objects/{objectId}/instances", {"objectId": "a/b c"}) == "/objects/a%2Fb%20c/instances"
    assert upstream_path("/", {}) == "/"


@pytest.mark.parametrize(
    ("value", "classes"),
    [(["news", "sport"], {"news", "sport"}), ("news,sport_ro", {"news", "sport_ro"}), (" news , ,x ", {"news", "x"}),
     ([], set()), ("", set()), (["a,b", "c"], {"a", "b", "c"})],
)
def test_auth_classes_accept_lists_and_comma_strings(value: object, classes: set[str]) -> None:
    assert parse_auth_classes(value) == classes


@pytest.mark.parametrize("value", [5, None, {"a": 1}, ["a", 1], [["a"]]])
def test_auth_classes_refuse_other_values(value: object) -> None:
    with pytest.raises(ValueError, match="auth_classes"):
        parse_auth_classes(value)


def test_malformed_or_missing_tags_mean_no_classes() -> None:
    assert resource_classes(None) == frozenset()
    assert resource_classes({"tags": {"auth_classes": 7}}) == frozenset()
    assert resource_classes({"tags": "x"}) == frozenset()
    assert resource_classes({"tags": {"auth_classes": "a,b"}}) == {"a", "b"}


def caller(*groups: str, scopes: list[str] | None = None, model: ClassModel = ClassModel.CLASS) -> Caller:
    """A caller judged by the class model unless told otherwise (tests/test_authz_class_models.py
    covers the others)."""
    return Caller("someone", frozenset(groups), frozenset(scopes) if scopes is not None else None, model)


@pytest.mark.parametrize(
    ("groups", "classes", "granted"),
    [
        (["news_read"], ["news"], {R}),
        (["news_read", "news_write"], ["news", "x"], {R, W}),
        (["news_read"], ["sport"], set()),
        (["sport_read", "sport_write", "sport_delete"], ["news", "sport"], {R, W, D}),
        (["news_read", "sport_delete"], ["news", "sport"], {R, D}),
        (["admin"], [], {R, W, D}),
        (["admin"], ["anything"], {R, W, D}),
        ([], ["news"], set()),
        (["news"], ["news"], set()),  # a bare class name is not a permission
        (["news_reader"], ["news"], set()),
        (["_read"], [""], set()),
    ],
)
def test_groups_grant_permissions_on_listed_classes(groups: list[str], classes: list[str], granted: set[Perm]) -> None:
    assert permissions(caller(*groups), classes) == granted


def test_token_scopes_limit_what_groups_grant() -> None:
    reader_scope = caller("news_read", "news_write", "news_delete", scopes=["tams-api/read"])
    assert permissions(reader_scope, ["news"]) == {R}
    admin_scope = caller("news_write", scopes=["tams-api/admin"])
    assert permissions(admin_scope, ["news"]) == {W}
    no_scopes = caller("news_read", scopes=["openid"])
    assert permissions(no_scopes, ["news"]) == set()
    assert caller("admin", scopes=["tams-api/read"]).is_admin is False
    assert permissions(caller("admin", scopes=["tams-api/read"]), []) == {R}
    assert caller("admin", scopes=["tams-api/admin"]).is_admin is True
    assert caller("admin").is_admin is True
    assert caller("news_read").is_admin is False


@pytest.mark.parametrize(
    ("granted", "needed", "verdict"),
    [({R}, {R}, Verdict.ALLOW), ({R}, {W}, Verdict.FORBID), (set(), {R}, Verdict.HIDE), (set(), set(), Verdict.ALLOW),
     ({W}, {R}, Verdict.FORBID), ({R, W}, {R, W, D}, Verdict.FORBID), (ALL_PERMS, ALL_PERMS, Verdict.ALLOW)],
)
def test_no_permission_hides_and_some_permission_forbids(granted: set[Perm], needed: set[Perm],
                                                          verdict: Verdict) -> None:
    assert decide(granted, needed) is verdict


def test_changing_classes_needs_every_permission_a_class_carries() -> None:
    assert class_change_needs({"news"}, {"news"}) == frozenset()
    assert class_change_needs(["news", "x"], ["x", "news"]) == frozenset()
    assert class_change_needs({"news"}, {"news", "sport"}) == ALL_PERMS
    assert class_change_needs({"news", "sport"}, {"news"}) == ALL_PERMS
    assert class_change_needs(set(), {"news"}) == ALL_PERMS


def test_new_resources_only_carry_classes_the_caller_can_write() -> None:
    editor = caller("news_read", "news_write", "sport_read")
    assert may_create_with(editor, {"news"})
    assert not may_create_with(editor, {"news", "sport"})
    assert not may_create_with(editor, set())
    assert not may_create_with(caller("news_write", scopes=["tams-api/read"]), {"news"})
    assert may_create_with(caller("admin"), set())


def test_page_tokens_are_authenticated() -> None:
    codec = CursorCodec(b"k" * 32)
    cursor = Cursor("/flows?limit=7&page=o7", 3, "some-id")
    token = codec.encode(cursor)
    assert codec.decode(token) == cursor
    assert CursorCodec(b"k" * 32).decode(token) == cursor, "replicas sharing the secret read each other's tokens"
    other = CursorCodec(b"j" * 32)
    from authz_proxy.errors import BadRequest

    for bad in (other.encode(cursor), token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], "!!", "", "abc",
                token[:20]):
        with pytest.raises(BadRequest):
            codec.decode(bad)


def test_page_tokens_do_not_reveal_upstream_offsets() -> None:
    """A readable token would tell a caller how many hidden items precede the next one."""
    import base64

    codec = CursorCodec(b"k" * 32)
    tokens = [codec.encode(Cursor(f"/flows?limit=200&page=o{offset}", skip, "id-" + "x" * 8))
              for offset, skip in ((0, 1), (200, 57), (1400, 199))]
    for token in tokens:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        for plain in (b"/flows", b"limit", b"page=o", b"id-xxxxxxxx", b'",57,'):
            assert plain not in raw
    assert len({len(t) for t in tokens}) == 1, "token lengths must not track the offsets"
    assert codec.encode(Cursor("/flows", 0, None)) != codec.encode(Cursor("/flows", 0, None)), "fresh nonce each time"


@pytest.mark.parametrize(
    ("groups", "old", "new", "allowed"),
    [
        (["news_read", "news_write", "news_delete"], ["news"], ["sport"], False),
        (["news_read", "news_write", "news_delete"], ["news"], ["news", "sport"], False),
        (["news_read", "news_write", "news_delete", "sport_write"], ["news"], ["sport"], True),
        (["news_read", "news_write", "news_delete"], ["news", "sport"], ["news"], True),  # removing only
        (["news_read", "news_write", "news_delete"], ["news"], [], True),
        (["news_read", "news_write", "news_delete"], ["news"], ["news"], True),
        (["admin"], ["news"], ["anything"], True),
    ],
)
def test_class_changes_only_add_classes_the_caller_can_write(groups: list[str], old: list[str], new: list[str],
                                                             allowed: bool) -> None:
    from authz_proxy.rules import may_change_classes

    assert may_change_classes(caller(*groups), old, new) is allowed


def test_class_changes_respect_the_write_scope() -> None:
    from authz_proxy.rules import may_change_classes

    groups = ("news_read", "news_write", "news_delete", "sport_write")
    assert not may_change_classes(caller(*groups, scopes=["tams-api/read", "tams-api/delete"]), ["news"], ["sport"])
    assert not may_change_classes(caller("admin", scopes=["tams-api/read"]), ["news"], ["sport"])


def test_callers_without_any_read_group_can_read_nothing() -> None:
    from authz_proxy.rules import may_read_some

    assert may_read_some(caller("news_read"))
    assert may_read_some(caller("admin"))
    assert not may_read_some(caller("news_write", "news_delete"))
    assert not may_read_some(caller("_read"))
    assert not may_read_some(caller("news_read", scopes=["tams-api/write"]))
