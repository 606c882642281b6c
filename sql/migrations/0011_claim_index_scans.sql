-- werkfluss 0011: the claim walks its indexes in order instead of by bitmap.
--
-- Every claim, suspend and wake-up moves a queue row in and out of the partial
-- indexes the claim reads (the line, the runs due). Until vacuum comes, those
-- indexes keep an entry for each old row version. A bitmap scan visits every
-- such entry on every claim (10,000 runs put to sleep in a burst made each
-- claim read 10,000 dead entries: ~6 ms); an ordered index scan marks the dead
-- ones it meets, so the next claim skips them (0.07 ms), and stops at its LIMIT.
-- Every other read of a claim is by key (a run's row, its log, its inputs): a
-- sequential scan is never the right plan there, but it is what the planner
-- picks for a table that grew in a burst before autovacuum analyzed it (each
-- claim then read the whole event log once per claimed run).
ALTER FUNCTION werkfluss._claim(text[], integer, text) SET enable_bitmapscan = off;
ALTER FUNCTION werkfluss._claim(text[], integer, text) SET enable_seqscan = off;
