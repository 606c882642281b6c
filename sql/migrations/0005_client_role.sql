-- werkfluss 0005 (placeholder until the client role lands)
SELECT 1;
