"""``/service/profiles`` and ``/service/profiles/{id}``: Flow Profiles.

A Profile is immutable technical metadata (``flow_metadata``) that Flows can be created from
(``profile_id`` on a Flow PUT, see ``flows.apply_profile``). POST creates one; a second POST of
the same id is 400, as the spec says (Profiles are never changed or deleted, so Flows made from
them keep matching them).
"""

from __future__ import annotations

import logging

from aiohttp import web

from .. import schemas
from ..errors import BadRequest, NotFound, utc_now_iso
from .common import (
    FORMATS,
    check_uuid,
    json_body,
    json_response,
    page_token,
    paging_headers,
    path_uuid,
    principal_of,
    query_format,
    query_limit,
    query_mime,
    query_page_after,
    store_of,
)

__all__ = ["routes"]

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

PROFILE_FORMATS = FORMATS - {"urn:x-nmos:format:multi"}  # Profiles are single-essence


@routes.get("/service/profiles")
async def get_profiles(request: web.Request) -> web.Response:
    store = store_of(request)
    limit = query_limit(request, store)
    page, after = await store.db.list_profiles(
        format=query_format(request, PROFILE_FORMATS),
        codec=query_mime(request, "codec"),
        label=request.query.get("label"),
        after=query_page_after(request, "profiles:label"),
        limit=limit,
    )
    next_key = page_token("profiles:label", after)
    return json_response(page, headers=paging_headers(request, limit, len(page), next_key))


@routes.get("/service/profiles/{profile_id}")
async def get_profile(request: web.Request) -> web.Response:
    profile_id = path_uuid(request, "profile_id", "Profile id")
    profile = await store_of(request).db.get_profile(profile_id)
    if profile is None:
        raise NotFound(f"Profile {profile_id} does not exist")
    return json_response(profile)


@routes.post("/service/profiles/{profile_id}")
async def post_profile(request: web.Request) -> web.Response:
    store = store_of(request)
    profile_id = check_uuid(request.match_info["profile_id"], "Profile id")  # creating: a bad id is bad input
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("The Profile must be a JSON object")
    body = {k: v for k, v in body.items() if k != "created"}  # server-managed
    schemas.check(body, "profile.json", "Profile")
    if body["id"] != profile_id:
        raise BadRequest(f"The Profile id in the body ({body['id']}) differs from the path ({profile_id})")
    if body["flow_metadata"].get("format") not in PROFILE_FORMATS:
        raise BadRequest("A Profile's flow_metadata needs a single-essence format")
    profile = await store.db.create_profile(body, principal_of(request).name, utc_now_iso())
    return json_response(profile, status=201)
