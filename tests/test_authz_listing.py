"""Filtered listings page properly through the proxy.

60 Flows in the store; each caller may read a different few of them:
p1 every fifth Flow (positions 4, 9, ... 59), p2 the first twelve (then 48 hidden ones), p3 only
the very last, p4 none. The proxy reads the store 7 Flows at a time, so pages cut across
upstream pages. Every page is walked by following Link: all pages but the last hold exactly
``limit`` items, no page before the end is empty, the last page has no Link, and every readable
Flow appears exactly once, in the store's order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from authz_support import PROXY_CLIENT, ProxyEnv, client, new_id, start_env, video_flow

from tests.conftest import start_store

COUNT = 60
UPSTREAM_PAGE = 7
CALLERS = {"p1": lambda i: i % 5 == 4, "p2": lambda i: i < 12, "p3": lambda i: i == COUNT - 1, "p4": lambda i: False}


@dataclass
class Listing:
    env: ProxyEnv
    order: list[str]  # every Flow id, in the store's listing order

    def visible(self, caller: str) -> list[str]:
        return [fid for i, fid in enumerate(self.order) if CALLERS[caller](i)]


def store_order(env: ProxyEnv, query: str = "") -> list[str]:
    ids: list[str] = []
    path: str | None = "/flows?limit=13" + query
    while path is not None:
        answer = env.store_call("GET", path)
        assert answer.status == 200
        ids += [f["id"] for f in answer.json()]
        path = next_link(answer)
        if path is not None:
            path = path[len(env.store.url):]
    return ids


@pytest.fixture(scope="module")
def listing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listing]:
    clients = [PROXY_CLIENT, client("admin", ["admin"]), client("writer", ["p1_write"])]
    clients += [client(name, [f"{name}_read"]) for name in CALLERS]
    store = start_store(tmp_path_factory.mktemp("authz-listing") / "data", clients=clients)
    env = start_env(store, upstream_page_size=UPSTREAM_PAGE)
    flows = {}
    for _ in range(COUNT):
        fid = new_id()
        flows[fid] = video_flow(fid, new_id(), ["filler"])
        assert env.store_call("PUT", f"/flows/{fid}", flows[fid]).status == 201
    order = store_order(env)
    assert sorted(order) == sorted(flows)
    # Classes by position in the listing, so the patterns are known whatever the store's order.
    for i, fid in enumerate(order):
        classes = ["filler"] + [name for name, sees in CALLERS.items() if sees(i)]
        assert env.store_call("PUT", f"/flows/{fid}", {**flows[fid], "tags": {"auth_classes": classes}}).status == 204
    assert store_order(env) == order, "updating tags must not reorder the listing"
    yield Listing(env, order)
    env.close()
    store.stop()


LINK = re.compile(r'<([^>]+)>;\s*rel="next"')


def next_link(answer: Any) -> str | None:
    match = LINK.search(answer.headers.get("Link", ""))
    return match.group(1) if match else None


def walk(env: ProxyEnv, caller: str, first: str) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following Link from ``first``; checks each page's headers."""
    pages: list[list[dict[str, Any]]] = []
    path: str | None = first
    while path is not None:
        answer = env.call(caller, "GET", path)
        assert answer.status == 200, answer.body
        page = answer.json()
        pages.append(page)
        assert answer.headers["X-Paging-Count"] == str(len(page))
        link = next_link(answer)
        if link is None:
            assert "X-Paging-NextKey" not in answer.headers
            path = None
        else:
            assert link.startswith(env.url + "/flows?"), "links must lead back through the proxy"
            assert parse_qs(urlsplit(link).query)["page"] == [answer.headers["X-Paging-NextKey"]]
            path = link[len(env.url):]
        assert len(pages) <= COUNT + 1, "paging does not end"
    return pages


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("limit", [1, 5, 7, 12, 13, 100])
def test_every_page_is_full_until_the_last_and_nothing_repeats(listing: Listing, caller: str, limit: int) -> None:
    pages = walk(listing.env, caller, f"/flows?limit={limit}")
    expected = listing.visible(caller)
    got = [f["id"] for page in pages for f in page]
    assert got == expected, "each readable Flow once, in the store's order, and nothing else"
    assert all(len(page) == limit for page in pages[:-1]), [len(p) for p in pages]
    assert len(pages) == max(1, math.ceil(len(expected) / limit))
    assert pages[-1] or len(pages) == 1, "an empty page may only be the only page"


def test_filters_and_order_survive_paging(listing: Listing) -> None:
    env = listing.env
    reversed_order = list(reversed(store_order(env, "&reverse_order=true")))
    assert reversed_order == listing.order
    pages = walk(env, "p1", "/flows?limit=3&reverse_order=true&format=urn:x-nmos:format:video")
    assert [f["id"] for page in pages for f in page] == list(reversed(listing.visible("p1")))
    none = walk(env, "p1", "/flows?limit=3&format=urn:x-nmos:format:audio")
    assert none == [[]]


def test_one_page_costs_only_the_upstream_pages_it_needs(listing: Listing) -> None:
    env = listing.env
    env.recorder.clear()
    answer = env.call("p2", "GET", "/flows?limit=5")
    assert [f["id"] for f in answer.json()] == listing.visible("p2")[:5]
    listed = [s for s in env.recorder.seen if s.raw_path == "/flows"]
    # five readable Flows plus one more to know there is a next page: positions 0-5, one upstream page
    assert len(listed) == 1
    env.recorder.clear()
    walk(env, "p3", "/flows?limit=100")
    assert len([s for s in env.recorder.seen if s.raw_path == "/flows"]) == math.ceil(COUNT / UPSTREAM_PAGE)


def test_admin_listing_passes_straight_through(listing: Listing) -> None:
    env = listing.env
    pages = walk(env, "admin", "/flows?limit=25")
    assert [f["id"] for page in pages for f in page] == listing.order


def test_page_tokens_cannot_be_forged_or_moved(listing: Listing) -> None:
    env = listing.env
    answer = env.call("p1", "GET", "/flows?limit=2")
    token = answer.headers["X-Paging-NextKey"]
    assert env.call("p1", "GET", f"/flows?limit=2&page={token}").status == 200
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    refused = env.call("p1", "GET", f"/flows?limit=2&page={tampered}")
    assert refused.status == 400
    assert set(refused.json()) == {"type", "summary", "time"}
    assert env.call("p1", "GET", f"/sources?limit=2&page={token}").status == 400
    assert env.call("p1", "GET", "/flows?limit=2&page=o2").status == 400, "the store's own cursor is not ours"


def test_hidden_flows_never_appear_in_any_listing(listing: Listing) -> None:
    env = listing.env
    for caller in CALLERS:
        seen = {f["id"] for page in walk(env, caller, "/flows?limit=50") for f in page}
        assert seen == set(listing.visible(caller))


def test_callers_who_can_read_nothing_cost_the_store_nothing(listing: Listing) -> None:
    env = listing.env
    env.recorder.clear()
    for caller in ("p4", "writer"):
        answer = env.call(caller, "GET", "/flows?limit=5")
        assert answer.status == 200 and answer.json() == []
        assert "Link" not in answer.headers
    # p4 holds a read group, so the store is scanned (and nothing found); writer holds none.
    assert env.recorder.seen and all(s.subject == PROXY_CLIENT["client_id"] for s in env.recorder.seen)
    env.recorder.clear()
    assert env.call("writer", "GET", "/flows?limit=5").json() == []
    assert not env.recorder.seen


def test_page_tokens_are_opaque(listing: Listing) -> None:
    """p1's next page starts after hidden Flows; the token must not tell how many."""
    import base64

    answer = listing.env.call("p1", "GET", "/flows?limit=2")
    token = answer.headers["X-Paging-NextKey"]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for plain in (b"/flows", b"limit", listing.visible("p1")[2].encode()):
        assert plain not in raw


def test_replicas_sharing_a_cursor_secret_continue_each_others_listings(listing: Listing) -> None:
    store = listing.env.store
    first, second = (start_env(store, upstream_page_size=UPSTREAM_PAGE, cursor_secret=b"shared between replicas")
                     for _ in range(2))
    stranger = start_env(store, upstream_page_size=UPSTREAM_PAGE, cursor_secret=b"another secret")
    try:
        page = first.call("p1", "GET", "/flows?limit=4")
        token = page.headers["X-Paging-NextKey"]
        rest = walk(second, "p1", f"/flows?limit=4&page={token}")
        got = [f["id"] for f in page.json()] + [f["id"] for p in rest for f in p]
        assert got == listing.visible("p1")
        assert stranger.call("p1", "GET", f"/flows?limit=4&page={token}").status == 400
    finally:
        for env in (first, second, stranger):
            env.close()
