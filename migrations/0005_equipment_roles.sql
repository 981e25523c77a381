-- Hall equipment gets invites of its own (issue 13): `encoder` (WHIP ingest), `player` (WHEP
-- playback) and `captioner` (automatic captions). SQLite cannot change a CHECK constraint, so
-- the invites table is rebuilt with the same rows. The new table refers to itself under its
-- final name; RENAME keeps that reference, and nothing else refers to invites.
CREATE TABLE invites_new (
    id            TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL REFERENCES sessions(id),
    role          TEXT NOT NULL CHECK (role IN ('leader', 'representative', 'participant', 'site', 'interpreter', 'encoder', 'player', 'captioner')),
    display_name  TEXT,
    relative_of   TEXT REFERENCES invites_new(id),
    open          INTEGER NOT NULL DEFAULT 0,
    revoked_at    INTEGER,
    created_at    INTEGER NOT NULL
);
INSERT INTO invites_new (id, session_id, role, display_name, relative_of, open, revoked_at, created_at)
    SELECT id, session_id, role, display_name, relative_of, open, revoked_at, created_at FROM invites;
DROP TABLE invites;
ALTER TABLE invites_new RENAME TO invites;
CREATE INDEX invites_by_session ON invites(session_id);
