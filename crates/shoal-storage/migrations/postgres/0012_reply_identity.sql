-- Replies are identified within their request (shoal-storage `PostgresMessageStorage`): two
-- processes that mint the same reply id for different requests must not lose either reply.
ALTER TABLE {prefix}_replies DROP CONSTRAINT {prefix}_replies_pkey;
ALTER TABLE {prefix}_replies ADD PRIMARY KEY (request_id, id);
