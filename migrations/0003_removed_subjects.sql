-- People the course leader removed from a session, by pseudonymous subject (a personal
-- invite's id, or the id an open-link person was given at admission). Their link or rejoin
-- token no longer lets them in, even after the session's room has closed and started again.

CREATE TABLE removed_subjects (
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    subject     TEXT NOT NULL,
    removed_at  INTEGER NOT NULL,
    PRIMARY KEY (session_id, subject)
);
