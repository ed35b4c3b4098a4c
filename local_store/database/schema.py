"""The database schema: one idempotent DDL script, the columns added since the first release, and
shared SQL fragments."""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    id          TEXT PRIMARY KEY,
    format      TEXT NOT NULL,
    label       TEXT,
    description TEXT,
    tags        TEXT NOT NULL DEFAULT '{}',
    created     TEXT NOT NULL,
    updated     TEXT NOT NULL,
    created_by  TEXT,
    updated_by  TEXT
);
CREATE TABLE IF NOT EXISTS flows (
    id               TEXT PRIMARY KEY,
    source_id        TEXT NOT NULL REFERENCES sources(id),
    doc              TEXT NOT NULL,          -- the Flow as PUT, minus server-managed fields
    format           TEXT,
    codec            TEXT,
    label            TEXT,
    container        TEXT,
    status           TEXT,
    frame_width      INTEGER,
    frame_height     INTEGER,
    init_segments    INTEGER NOT NULL DEFAULT 0,
    read_only        INTEGER NOT NULL DEFAULT 0,
    created          TEXT NOT NULL,
    metadata_updated TEXT NOT NULL,
    segments_updated TEXT,
    created_by       TEXT,
    updated_by       TEXT,
    metadata_version TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flows_source ON flows(source_id);
CREATE INDEX IF NOT EXISTS flows_created ON flows(created, id);
CREATE TABLE IF NOT EXISTS flow_collections (
    collector_id TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    member_id    TEXT NOT NULL,
    PRIMARY KEY (collector_id, position)
);
CREATE INDEX IF NOT EXISTS flow_collections_member ON flow_collections(member_id);
CREATE TABLE IF NOT EXISTS objects (
    id                       TEXT PRIMARY KEY,
    allocated_by_flow        TEXT,            -- the Flow whose storage POST created it
    controlled               INTEGER NOT NULL DEFAULT 0,  -- bytes held by this store
    content_type             TEXT,
    size                     INTEGER,         -- set once the bytes are uploaded
    role                     TEXT,            -- 'media' | 'init' once registered
    first_referenced_by_flow TEXT,
    ot_start_ns              INTEGER,         -- object_timerange on the object's timeline
    ot_end_ns                INTEGER,
    ot_incl_start            INTEGER,
    ot_incl_end              INTEGER,
    ot_first_hns              INTEGER,
    ot_last_hns               INTEGER,
    timerange                TEXT,            -- object_timerange as text
    key_frame_count          INTEGER,
    init_object_id           TEXT,
    created                  TEXT NOT NULL,
    uploaded                 TEXT,
    unreferenced_at          REAL             -- epoch seconds the last reference went
);
CREATE TABLE IF NOT EXISTS object_urls (      -- uncontrolled instances (get_urls given by clients)
    object_id TEXT NOT NULL REFERENCES objects(id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    url       TEXT NOT NULL,
    label     TEXT,
    PRIMARY KEY (object_id, position)
);
CREATE TABLE IF NOT EXISTS segments (
    flow_id        TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    first_hns       INTEGER NOT NULL,
    last_hns        INTEGER NOT NULL,
    timerange      TEXT NOT NULL,         -- as formatted once by mediatimestamp on the way in
    start_ns       INTEGER NOT NULL,
    end_ns         INTEGER NOT NULL,
    incl_start     INTEGER NOT NULL,
    incl_end       INTEGER NOT NULL,
    object_id      TEXT NOT NULL REFERENCES objects(id),
    ts_offset_ns   INTEGER NOT NULL DEFAULT 0,
    ts_offset      TEXT NOT NULL DEFAULT '0:0',
    last_duration  TEXT,
    sample_offset  INTEGER,
    sample_count   INTEGER,
    init_object_id TEXT REFERENCES objects(id),
    PRIMARY KEY (flow_id, first_hns)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS segments_object ON segments(object_id, flow_id);
CREATE INDEX IF NOT EXISTS segments_init_object ON segments(init_object_id, flow_id)
    WHERE init_object_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS collected_objects (  -- tombstones of garbage-collected objects
    id           TEXT PRIMARY KEY,
    collected_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_file_removals (  -- media files to unlink after the COMMIT
    object_id TEXT PRIMARY KEY,
    queued_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delete_requests (
    id      TEXT PRIMARY KEY,
    flow_id TEXT NOT NULL,
    doc     TEXT NOT NULL,                -- deletion-request.json
    created TEXT NOT NULL,
    expiry  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS delete_requests_expiry ON delete_requests(expiry);
CREATE TABLE IF NOT EXISTS webhooks (
    id      TEXT PRIMARY KEY,
    url     TEXT NOT NULL,
    owner   TEXT,                         -- the principal that registered it
    doc     TEXT NOT NULL,                -- webhook-post.json as given (minus status)
    status  TEXT NOT NULL,
    error   TEXT,                         -- error.json, when status is 'error'
    created TEXT NOT NULL,
    delivered_seq INTEGER NOT NULL DEFAULT 0  -- outbox events up to here are done with
);
-- Change events, written in the transaction of the change they announce; kept until every
-- active webhook's delivered_seq has passed them.
CREATE TABLE IF NOT EXISTS outbox (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL                   -- ChangeEvent.to_json()
);
CREATE TABLE IF NOT EXISTS profiles (
    id      TEXT PRIMARY KEY,
    doc     TEXT NOT NULL,                -- profile.json as created
    label   TEXT,
    format  TEXT,
    codec   TEXT,
    created TEXT NOT NULL
);
"""

# Columns added after the first release; ALTERed into older data dirs before INDEXES run.
ADDED_COLUMNS = (
    ("objects", "unreferenced_at", "REAL"),
    ("webhooks", "delivered_seq", "INTEGER NOT NULL DEFAULT 0"),
)

# The webhook statuses in which events are recorded and delivered.
ACTIVE_WEBHOOK_STATUSES = ("created", "started")

INDEXES = """
CREATE INDEX IF NOT EXISTS objects_unregistered ON objects(created)
    WHERE first_referenced_by_flow IS NULL;
CREATE INDEX IF NOT EXISTS objects_unreferenced ON objects(unreferenced_at)
    WHERE unreferenced_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS objects_init ON objects(init_object_id)
    WHERE init_object_id IS NOT NULL;
CREATE TEMP TABLE IF NOT EXISTS touched_objects (id TEXT PRIMARY KEY) WITHOUT ROWID;
"""

# Whether the row ``objects`` is referenced: by a segment (as media or init object) or, for an
# init object, by a media object.
REFERENCED = (
    "(EXISTS (SELECT 1 FROM segments s WHERE s.object_id = objects.id) "
    "OR EXISTS (SELECT 1 FROM segments s WHERE s.init_object_id = objects.id) "
    "OR EXISTS (SELECT 1 FROM objects m WHERE m.init_object_id = objects.id))"
)

# Source collections are inferred from Flow collections: Source S collects Source T when a Flow
# of S collects a Flow of T. The rows of this join: member Flow `mf`, collecting Flow `cf`.
SOURCE_COLLECTION_JOIN = "FROM flows mf JOIN flow_collections fc ON fc.member_id = mf.id JOIN flows cf ON cf.id = fc.collector_id"
