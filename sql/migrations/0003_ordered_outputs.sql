-- werkfluss 0003: the log keeps results exactly as recorded.
--
-- jsonb orders object keys by length and bytes, so a step returning
-- {"zeta": 1, "a": 2} would read back as {"a": 2, "zeta": 1}: a workflow that
-- iterates the dict would see another order on replay than it saw live.
-- json keeps the text as written (and is still readable and queryable in SQL).
ALTER TABLE werkfluss.events ALTER COLUMN output TYPE json USING output::json;
