-- paylock schema on a Citus coordinator: Migrate applies this file, then
-- schema.sql (whose CREATE TABLE IF NOT EXISTS then find these tables, and
-- which adds paylock_key_id), then the unique index, and then makes services
-- a reference table and payments a table distributed by service_id, all in
-- one transaction.
--
-- It differs from schema.sql only where Citus requires it: every unique
-- index and the primary key of a distributed table include the distribution
-- column, so the primary key is (service_id, id); and id comes from a
-- bigserial sequence, whose values Citus keeps unique across nodes (a worker
-- draws from a range of its own). The unique index on (service_id,
-- line_item_id) needs no change: it includes service_id.

CREATE TABLE IF NOT EXISTS services (
    id   bigint PRIMARY KEY,
    name text   NOT NULL
);

CREATE TABLE IF NOT EXISTS payments (
    id           bigserial,
    service_id   bigint      NOT NULL REFERENCES services (id),
    -- 1 to 255 bytes: payment.MaxLineItemIDLen
    line_item_id text        NOT NULL CHECK (octet_length(line_item_id) BETWEEN 1 AND 255),
    amount_cents bigint      NOT NULL DEFAULT 0,
    currency     text        NOT NULL DEFAULT '',
    status       text        NOT NULL DEFAULT '',
    data         jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, id)
)
