"""What each TAMS 8.2 route needs, and the permission decisions, as pure functions.

Nothing here does I/O: ``match_route`` classifies a request line against ``ROUTES`` (every
path and method of the TAMS 8.2 OpenAPI document, and nothing else), and the functions below
decide from a caller's groups and a resource's ``auth_classes`` tag. ``app.py`` does the
look-ups and calls these.

The model (AppNote 0016, fine-grained part):

* A resource's ``auth_classes`` tag (a list of strings or one comma-separated string) lists
  tags; each grants permissions to some groups, by the caller's ``ClassModel``
  (``classes.py``, option ``--class-model``):

  - ``class``: tag ``news`` grants read, write and delete to the groups ``news_read``,
    ``news_write`` and ``news_delete``.
  - ``group`` (the BBC example proxy's): tag ``news_write`` grants write, and only write, to
    the group ``news_write``; a tag grants the permission its name ends with (``read``,
    ``write``, ``delete``) to the group of exactly that name, and a tag ending otherwise
    grants nothing.
  - ``auto`` (the default): a tag ending in ``read``, ``write`` or ``delete`` is read the
    ``group`` way, any other the ``class`` way, so stores tagged for either proxy keep their
    decisions. A class of ours ending in one of those words (``thread``) is then read the
    ``group`` way; such stores want ``class``.

* The group ``admin`` grants every permission on everything, and alone opens the admin-only
  routes.
* When the token carries a ``scope`` claim, it limits what the request claims: a permission
  counts only if ``tams-api/<permission>`` (or ``tams-api/admin``) is among the scopes, and the
  admin-only routes need ``tams-api/admin``. A token without a ``scope`` claim is judged on its
  groups alone.
* Refusals: no permission at all on a resource answers 404 (as if it did not exist, so its
  existence is not leaked); some permission but not the one needed answers 403. A resource that
  does not exist has no classes, so only admins get past 404 for it.
* Adding or removing a tag hands its groups their permissions (or takes them away), so changing
  ``auth_classes`` on an existing resource needs read, write and delete on it, and every tag it
  adds must be one that grants the caller write (or anyone with all three permissions could
  hand a resource to a group they do not belong to). A new resource may only carry such tags.
  "The classes the caller can write" below means exactly these tags, in whichever model.
* The proxy filters listings itself, item by item, with the same ``permissions``; it sends no
  ``tag.auth_classes`` filter upstream, so listings follow the model with nothing more to do.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from .classes import ClassModel, granted_by, tags_granting
from .errors import MethodNotAllowed, NotFound

__all__ = [
    "ADMIN_GROUP",
    "ALL_PERMS",
    "AUTH_CLASSES",
    "ROUTES",
    "Caller",
    "ClassModel",
    "Kind",
    "Perm",
    "Resource",
    "RouteMatch",
    "RouteRule",
    "Verdict",
    "class_change_needs",
    "decide",
    "match_route",
    "may_change_classes",
    "may_create_with",
    "may_read_some",
    "parse_auth_classes",
    "permissions",
    "readable_classes",
    "resource_classes",
    "upstream_path",
    "writable_classes",
]

AUTH_CLASSES = "auth_classes"
ADMIN_GROUP = "admin"
SCOPE_PREFIX = "tams-api/"


class Perm(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    DELETE = "delete"


ALL_PERMS: frozenset[Perm] = frozenset(Perm)


class Resource(enum.Enum):
    """The resource whose classes decide a request."""

    NONE = "none"
    FLOW = "flow"
    SOURCE = "source"
    WEBHOOK = "webhook"
    OBJECT = "object"
    DELETE_REQUEST = "delete_request"


class Kind(enum.Enum):
    """How the proxy handles a route; each kind is one handler in ``app.py``."""

    OPEN = "open to any authenticated caller"
    ADMIN = "admin only"
    LIST = "listing filtered to readable items"
    GET_GUARDED = "resource read; the look-up is the answer"
    GUARDED = "permission on the resource, then forwarded"
    FLOW_PUT = "create or replace a Flow"
    FLOW_DELETE = "delete a Flow"
    TAG_PUT = "set a tag (auth_classes guarded)"
    TAG_DELETE = "delete a tag (auth_classes guarded)"
    COLLECTION_GET = "a Flow's flow_collection, filtered to readable Flows"
    COLLECTION_PUT = "set a Flow's flow_collection"
    SEGMENTS_GET = "list a Flow's segments"
    SEGMENTS_POST = "register segments"
    STORAGE_POST = "allocate storage"
    OBJECT_GET = "object with referenced_by_flows filtered"
    OBJECT_INSTANCES = "change an object's instances"
    WEBHOOK_POST = "register a webhook"
    WEBHOOK_PUT = "replace a webhook"
    DELETE_REQUEST_GET = "one flow delete request"


@dataclass(frozen=True, slots=True)
class RouteRule:
    template: str
    method: str
    kind: Kind
    resource: Resource = Resource.NONE
    perm: Perm | None = None
    # The path parameter naming the resource, e.g. "flowId".
    id_param: str | None = None


def _rules() -> tuple[RouteRule, ...]:
    rules: list[RouteRule] = []

    def add(template: str, methods: Iterable[str], kind: Kind, resource: Resource = Resource.NONE,
            perm: Perm | None = None, id_param: str | None = None) -> None:
        for method in methods:
            rules.append(RouteRule(template, method, kind, resource, perm, id_param))

    read = ("GET", "HEAD")
    flow, source, webhook = Resource.FLOW, Resource.SOURCE, Resource.WEBHOOK

    add("/", read, Kind.OPEN)
    add("/service", read, Kind.OPEN)
    add("/service", ["POST"], Kind.ADMIN)
    add("/service/storage-backends", read, Kind.OPEN)
    add("/service/profiles", read, Kind.OPEN)
    add("/service/profiles/{profileId}", read, Kind.OPEN)
    add("/service/profiles/{profileId}", ["POST"], Kind.ADMIN)

    add("/service/webhooks", read, Kind.LIST, webhook, Perm.READ)
    add("/service/webhooks", ["POST"], Kind.WEBHOOK_POST, webhook, Perm.WRITE)
    wid = "webhookId"
    add("/service/webhooks/{webhookId}", read, Kind.GET_GUARDED, webhook, Perm.READ, wid)
    add("/service/webhooks/{webhookId}", ["PUT"], Kind.WEBHOOK_PUT, webhook, Perm.WRITE, wid)
    add("/service/webhooks/{webhookId}", ["DELETE"], Kind.GUARDED, webhook, Perm.DELETE, wid)

    sid = "sourceId"
    add("/sources", read, Kind.LIST, source, Perm.READ)
    add("/sources/{sourceId}", read, Kind.GET_GUARDED, source, Perm.READ, sid)
    add("/sources/{sourceId}/tags", read, Kind.GUARDED, source, Perm.READ, sid)
    add("/sources/{sourceId}/tags/{name}", read, Kind.GUARDED, source, Perm.READ, sid)
    add("/sources/{sourceId}/tags/{name}", ["PUT"], Kind.TAG_PUT, source, Perm.WRITE, sid)
    add("/sources/{sourceId}/tags/{name}", ["DELETE"], Kind.TAG_DELETE, source, Perm.WRITE, sid)
    for prop in ("description", "label"):
        add(f"/sources/{{sourceId}}/{prop}", read, Kind.GUARDED, source, Perm.READ, sid)
        add(f"/sources/{{sourceId}}/{prop}", ["PUT", "DELETE"], Kind.GUARDED, source, Perm.WRITE, sid)

    fid = "flowId"
    add("/flows", read, Kind.LIST, flow, Perm.READ)
    add("/flows/{flowId}", read, Kind.GET_GUARDED, flow, Perm.READ, fid)
    add("/flows/{flowId}", ["PUT"], Kind.FLOW_PUT, flow, Perm.WRITE, fid)
    add("/flows/{flowId}", ["DELETE"], Kind.FLOW_DELETE, flow, Perm.DELETE, fid)
    add("/flows/{flowId}/tags", read, Kind.GUARDED, flow, Perm.READ, fid)
    add("/flows/{flowId}/tags/{name}", read, Kind.GUARDED, flow, Perm.READ, fid)
    add("/flows/{flowId}/tags/{name}", ["PUT"], Kind.TAG_PUT, flow, Perm.WRITE, fid)
    add("/flows/{flowId}/tags/{name}", ["DELETE"], Kind.TAG_DELETE, flow, Perm.WRITE, fid)
    for prop in ("description", "label", "max_bit_rate", "avg_bit_rate"):
        add(f"/flows/{{flowId}}/{prop}", read, Kind.GUARDED, flow, Perm.READ, fid)
        add(f"/flows/{{flowId}}/{prop}", ["PUT", "DELETE"], Kind.GUARDED, flow, Perm.WRITE, fid)
    add("/flows/{flowId}/read_only", read, Kind.GUARDED, flow, Perm.READ, fid)
    add("/flows/{flowId}/read_only", ["PUT"], Kind.GUARDED, flow, Perm.WRITE, fid)
    add("/flows/{flowId}/flow_collection", read, Kind.COLLECTION_GET, flow, Perm.READ, fid)
    add("/flows/{flowId}/flow_collection", ["PUT"], Kind.COLLECTION_PUT, flow, Perm.WRITE, fid)
    add("/flows/{flowId}/flow_collection", ["DELETE"], Kind.GUARDED, flow, Perm.WRITE, fid)
    add("/flows/{flowId}/segments", read, Kind.SEGMENTS_GET, flow, Perm.READ, fid)
    add("/flows/{flowId}/segments", ["POST"], Kind.SEGMENTS_POST, flow, Perm.WRITE, fid)
    # Deleting media is destructive: the coarse scheme asks tams-api/delete for it, so do we.
    add("/flows/{flowId}/segments", ["DELETE"], Kind.GUARDED, flow, Perm.DELETE, fid)
    add("/flows/{flowId}/storage", ["POST"], Kind.STORAGE_POST, flow, Perm.WRITE, fid)

    oid = "objectId"
    add("/objects/{objectId}", read, Kind.OBJECT_GET, Resource.OBJECT, Perm.READ, oid)
    add("/objects/{objectId}/instances", ["POST", "DELETE"], Kind.OBJECT_INSTANCES, Resource.OBJECT,
        Perm.WRITE, oid)

    add("/flow-delete-requests", read, Kind.ADMIN)
    add("/flow-delete-requests/{request-id}", read, Kind.DELETE_REQUEST_GET, Resource.DELETE_REQUEST,
        Perm.DELETE, "request-id")
    return tuple(rules)


ROUTES: tuple[RouteRule, ...] = _rules()

_PARAM = re.compile(r"^\{([A-Za-z-]+)\}$")


@dataclass(frozen=True, slots=True)
class _Template:
    template: str
    parts: tuple[str, ...]
    methods: dict[str, RouteRule] = field(default_factory=dict)


def _templates() -> list[_Template]:
    by_template: dict[str, _Template] = {}
    for rule in ROUTES:
        parts = tuple(p for p in rule.template.split("/") if p)
        tpl = by_template.setdefault(rule.template, _Template(rule.template, parts))
        tpl.methods[rule.method] = rule
    return list(by_template.values())


_TEMPLATES = _templates()


@dataclass(frozen=True, slots=True)
class RouteMatch:
    rule: RouteRule
    params: dict[str, str]

    @property
    def resource_id(self) -> str | None:
        return self.params.get(self.rule.id_param) if self.rule.id_param else None


def _decode_segments(raw_path: str) -> list[str] | None:
    """Path segments, each percent-decoded; None for a path no route can have (no leading
    slash, empty or dot segments, bad UTF-8)."""
    if not raw_path.startswith("/"):
        return None
    if raw_path == "/":
        return []
    segments = []
    for raw in raw_path[1:].split("/"):
        try:
            seg = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
        if seg in ("", ".", "..") or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in seg):
            return None
        segments.append(seg)
    return segments


def match_route(method: str, raw_path: str) -> RouteMatch:
    """The rule for this request; NotFound for a path outside the API, MethodNotAllowed for a
    method the API does not define on that path."""
    segments = _decode_segments(raw_path)
    if segments is None:
        raise NotFound("No such path in the TAMS API")
    for tpl in _TEMPLATES:
        if len(tpl.parts) != len(segments):
            continue
        params: dict[str, str] = {}
        for part, seg in zip(tpl.parts, segments, strict=True):
            m = _PARAM.match(part)
            if m:
                params[m.group(1)] = seg
            elif part != seg:
                break
        else:
            rule = tpl.methods.get(method)
            if rule is None:
                raise MethodNotAllowed(f"{method} is not supported on {tpl.template}", sorted(tpl.methods))
            return RouteMatch(rule, params)
    raise NotFound("No such path in the TAMS API")


def upstream_path(template: str, params: Mapping[str, str]) -> str:
    """The path to send upstream, rebuilt from the decoded parameters so that what the store
    sees is exactly what was judged (``/`` inside an object id stays encoded)."""
    out = []
    for part in template.split("/"):
        m = _PARAM.match(part)
        out.append(quote(params[m.group(1)], safe="") if m else part)
    return "/".join(out) or "/"


# ---------------------------------------------------------------------------------------
# Callers and permissions


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified identity behind a request. ``scopes`` is None when the token had no scope
    claim (or the proxy is told to ignore scopes): then groups alone decide. ``model`` says how
    ``auth_classes`` tags grant permissions to groups (the proxy's ``--class-model``)."""

    subject: str
    groups: frozenset[str]
    scopes: frozenset[str] | None = None
    model: ClassModel = ClassModel.AUTO

    def claims(self, perm: Perm) -> bool:
        if self.scopes is None:
            return True
        return SCOPE_PREFIX + perm.value in self.scopes or SCOPE_PREFIX + "admin" in self.scopes

    @property
    def admin_group(self) -> bool:
        return ADMIN_GROUP in self.groups

    @property
    def is_admin(self) -> bool:
        """May use the admin-only routes."""
        return self.admin_group and (self.scopes is None or SCOPE_PREFIX + "admin" in self.scopes)

    def claimed(self) -> frozenset[Perm]:
        return frozenset(p for p in Perm if self.claims(p))


def parse_auth_classes(value: object) -> frozenset[str]:
    """The classes in an ``auth_classes`` tag value: a list of strings, or one string of
    comma-separated classes. Blank entries are dropped. ValueError for anything else."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [piece for v in value for piece in v.split(",")]
    else:
        raise ValueError("auth_classes must be a string or a list of strings")
    return frozenset(c.strip() for c in items if c.strip())


def resource_classes(resource: Mapping[str, object] | None) -> frozenset[str]:
    """The classes of a resource as the store returned it; none (so: admins only) when it is
    missing or its tag is malformed."""
    if resource is None:
        return frozenset()
    tags = resource.get("tags")
    if not isinstance(tags, Mapping) or AUTH_CLASSES not in tags:
        return frozenset()
    try:
        return parse_auth_classes(tags[AUTH_CLASSES])
    except ValueError:
        return frozenset()


def permissions(caller: Caller, classes: Iterable[str]) -> frozenset[Perm]:
    """What the caller may do to a resource with these classes."""
    if caller.admin_group:
        return caller.claimed()
    granted: set[Perm] = set()
    for cls in classes:
        granted.update(Perm(word) for word in granted_by(caller.model, cls, caller.groups))
    return frozenset(p for p in granted if caller.claims(p))


class Verdict(enum.Enum):
    ALLOW = 200
    FORBID = 403  # may see it, may not do this
    HIDE = 404  # may not even see it


def decide(granted: Iterable[Perm], needed: Iterable[Perm]) -> Verdict:
    granted = frozenset(granted)
    if frozenset(needed) <= granted:
        return Verdict.ALLOW
    return Verdict.FORBID if granted else Verdict.HIDE


def class_change_needs(old: Iterable[str], new: Iterable[str]) -> frozenset[Perm]:
    """Permissions a caller must hold on a resource to change its classes from ``old`` to
    ``new``. Every added or removed tag grants or withdraws permissions for some groups (under
    ``class`` all three, for a class's three groups), so any change at all needs all three; no
    change needs nothing extra."""
    return ALL_PERMS if frozenset(old) != frozenset(new) else frozenset()


def writable_classes(caller: Caller) -> frozenset[str]:
    """The tags that would grant the caller write (under ``class``, those ``<class>`` it holds
    ``<class>_write`` for; under ``group``, its groups ending in ``write``; under ``auto``,
    both, each kept where ``auto`` reads it that way)."""
    if not caller.claims(Perm.WRITE):
        return frozenset()
    return tags_granting(caller.model, Perm.WRITE.value, caller.groups)


def may_create_with(caller: Caller, classes: Iterable[str]) -> bool:
    """Whether the caller may create a resource carrying these classes: admins may create
    anything; others must name at least one class, and only classes they can write into, so
    nobody plants content in (or hands rights to) a class they do not belong to."""
    classes = frozenset(classes)
    if caller.admin_group:
        return caller.claims(Perm.WRITE)
    return bool(classes) and classes <= writable_classes(caller)


def may_change_classes(caller: Caller, old: Iterable[str], new: Iterable[str]) -> bool:
    """Whether the caller may change a resource's classes from ``old`` to ``new``, beyond the
    permissions ``class_change_needs`` asks on the resource: admins may; others only add
    classes they can write into. (Creating with a foreign class is refused by
    ``may_create_with``; this stops a later change doing the same.)"""
    if caller.admin_group:
        return caller.claims(Perm.WRITE)
    return frozenset(new) - frozenset(old) <= writable_classes(caller)


def may_read_some(caller: Caller) -> bool:
    """Whether any resource at all could be readable by the caller (if not, listings are empty
    without asking the store)."""
    if not caller.claims(Perm.READ):
        return False
    return caller.admin_group or bool(readable_classes(caller))


def readable_classes(caller: Caller) -> frozenset[str]:
    """The tags that would grant the caller read (the counterpart of ``writable_classes``)."""
    if not caller.claims(Perm.READ):
        return frozenset()
    return tags_granting(caller.model, Perm.READ.value, caller.groups)
