-- What each runner reports it cannot reach (one address per line; shoal-sharding judges
-- reachability by quorum from these reports). A new incarnation at an address starts empty.
ALTER TABLE {prefix}_runners ADD COLUMN unreachable TEXT NOT NULL DEFAULT '';
