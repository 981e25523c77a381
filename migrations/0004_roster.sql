-- What participants see of each other in a session: the names each person chose ('names',
-- the default) or only how many take part ('count'). The course leader always sees names.
ALTER TABLE sessions ADD COLUMN roster TEXT NOT NULL DEFAULT 'names' CHECK (roster IN ('names', 'count'));
