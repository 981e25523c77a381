-- Several nodes on one PostgreSQL store (issue 22). Times are UTC milliseconds since the Unix
-- epoch, from the writing node's clock (nodes keep time with NTP; a skew only shortens or
-- lengthens a lease, the epoch alone decides whose writes count).

-- One row per node: its internal URL, and when it last said it was alive (every second).
CREATE TABLE cluster_nodes (
    node_id       TEXT PRIMARY KEY,
    internal_url  TEXT NOT NULL,
    started_ms    INTEGER NOT NULL,
    heartbeat_ms  INTEGER NOT NULL
);

-- Which node owns each live session: claimed by a conditional update when the lease is free
-- or expired, renewed by its owner, never deleted (a release only lets it expire), so the
-- epoch only ever rises. A write for the session is accepted only from the node holding the
-- current epoch.
CREATE TABLE session_leases (
    session_id   TEXT PRIMARY KEY,
    node_id      TEXT NOT NULL,
    epoch        INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL
);
