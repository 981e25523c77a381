-- Courses, their sessions (course days) and the invites (join links) of each session.
-- Timestamps are UTC seconds since the Unix epoch.

CREATE TABLE courses (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    course_id     TEXT NOT NULL REFERENCES courses(id),
    title         TEXT NOT NULL,
    starts_at     INTEGER NOT NULL,
    ends_at       INTEGER NOT NULL,
    host_site     TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('scheduled', 'open', 'live', 'ended')),
    chat_enabled  INTEGER NOT NULL DEFAULT 0,
    ended_at      INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE INDEX sessions_by_course ON sessions(course_id);

-- One row per join link. A personal invite names its person (display name) for the leader's
-- roster and the export; an open link has no name (people type one and wait in the lobby).
CREATE TABLE invites (
    id            TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL REFERENCES sessions(id),
    role          TEXT NOT NULL CHECK (role IN ('leader', 'representative', 'participant', 'site', 'interpreter')),
    display_name  TEXT,
    relative_of   TEXT REFERENCES invites(id),
    open          INTEGER NOT NULL DEFAULT 0,
    revoked_at    INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE INDEX invites_by_session ON invites(session_id);

-- Server secrets made on first start (the join-token key), so links survive restarts.
CREATE TABLE secrets (
    name   TEXT PRIMARY KEY,
    value  BLOB NOT NULL
);
