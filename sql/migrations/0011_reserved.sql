-- Reserved: this number belongs to a migration on another branch. This
-- placeholder changes nothing; drop it when that migration is merged.
SELECT 1;
