-- Attendance: an append-only log of what happened to whom in a session, by pseudonymous
-- subject (the invite id, or for someone on an open link the id issued at admission) and role.
-- Names live in `invites` only. Times are UTC milliseconds since the Unix epoch.

CREATE TABLE attendance_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id   TEXT NOT NULL,
    subject      TEXT NOT NULL,
    invite_id    TEXT NOT NULL,
    role         TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('joined', 'left', 'admitted', 'floor_granted', 'floor_revoked', 'headcount')),
    -- for 'left': left | dropped | removed | session_ended | recovered
    reason       TEXT,
    -- for 'headcount'
    count        INTEGER,
    at_ms        INTEGER NOT NULL,
    -- 1 when written at start-up to close an interval a crash left open
    by_recovery  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX attendance_by_session ON attendance_events(session_id, at_ms);

-- When each present subject was last known to be there (updated every few seconds by the
-- room). After a crash, open intervals are closed at this time.
CREATE TABLE attendance_seen (
    session_id    TEXT NOT NULL,
    subject       TEXT NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    PRIMARY KEY (session_id, subject)
);

-- Every export of attendance data: who (admin, cli, or leader:<invite id>), when, what.
CREATE TABLE attendance_exports (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id    TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    format        TEXT NOT NULL,
    at_ms         INTEGER NOT NULL
);
