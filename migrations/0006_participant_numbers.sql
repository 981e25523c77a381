-- Each participant's number in a session, shown for someone without a name ("Deltaker 4"):
-- given in order of first arrival (in the lobby, for an open link), kept when they come back
-- and when the server restarts. Only participants are numbered, so the numbers of a course of
-- seven people are 1–7 (a person turned away in the lobby keeps the number they were given).
-- Pseudonymous; deleted with the session's attendance at retention.

CREATE TABLE participant_numbers (
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    subject     TEXT NOT NULL,
    number      INTEGER NOT NULL,
    PRIMARY KEY (session_id, subject),
    UNIQUE (session_id, number)
);
