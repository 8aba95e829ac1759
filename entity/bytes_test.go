package entity_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

// Rows whose fields hold bytes: With's row never shares memory that pgx
// reuses for the next read.

// blob is a row of blobs, its data scanned as pgtype.DriverBytes.
type blob struct {
	ID   int64
	N    int64
	Data pgtype.DriverBytes
}

// blobs is an entity.Table whose row holds a bytea scanned without a copy.
type blobs struct{}

func (blobs) LockKey(k string) (lock.Key, error) { return lock.NewKey("blobs", k), nil }

func (blobs) Ensure(k string) (string, []any) {
	return "INSERT INTO blobs (key, data) VALUES ($1::text, convert_to(repeat('A', 64), 'UTF8')) ON CONFLICT DO NOTHING", []any{k}
}

func (blobs) Find(k string) (string, []any) {
	return "SELECT id, n, data FROM blobs WHERE key = $1::text FOR UPDATE", []any{k}
}

func (blobs) Scan(row pgx.Row, _ bool) (*blob, error) {
	b := &blob{}
	if err := row.Scan(&b.ID, &b.N, &b.Data); err != nil {
		return nil, err
	}
	return b, nil
}

func (blobs) Save(before, after *blob) (string, []any, error) {
	if after.N == before.N && string(after.Data) == string(before.Data) {
		return "", nil, nil
	}
	return "UPDATE blobs SET n = $2::bigint, data = $3::bytea WHERE id = $1::bigint", []any{after.ID, after.N, []byte(after.Data)}, nil
}

// TestWithDriverBytesRowIsNotOverwritten: a row With scanned stays as read
// while fn reads more on the connection. pgtype.DriverBytes keeps a
// reference to the bytes it scanned; With's row must not be pgconn's read
// buffer, which fn's next query overwrites (and Save then writes back).
func TestWithDriverBytesRowIsNotOverwritten(t *testing.T) {
	t.Parallel()
	pool, ctx := setupPool(t, func(cfg *pgxpool.Config) { cfg.MaxConns = 1 })
	if _, err := pool.Exec(ctx, "CREATE TABLE blobs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, key text UNIQUE NOT NULL, n bigint NOT NULL DEFAULT 0, data bytea NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	repo := entity.New(pool, blobs{})
	want := strings.Repeat("A", 64)
	for i := range 3 {
		err := repo.With(ctx, "b", func(ctx context.Context, tx pgx.Tx, b *blob) error {
			var s string
			if err := tx.QueryRow(ctx, "SELECT repeat('Z', 200)").Scan(&s); err != nil {
				return err
			}
			if got := string(b.Data); got != want {
				t.Errorf("call %d: fn's row changed under it by fn's own query: data %q", i, got)
			}
			b.N++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var data []byte
	if err := pool.QueryRow(ctx, "SELECT data FROM blobs WHERE key = 'b'").Scan(&data); err != nil {
		t.Fatal(err)
	}
	if string(data) != want {
		t.Fatalf("committed data = %q, want %q", data, want)
	}
}

// raw is a row of raws: byte-slice fields of each kind.
type raw struct {
	ID   int64
	N    int64
	Bin  []byte
	Doc  json.RawMessage
	Text []byte
}

type raws struct{}

func (raws) LockKey(k string) (lock.Key, error) { return lock.NewKey("raws", k), nil }

func (raws) Ensure(k string) (string, []any) {
	return `INSERT INTO raws (key, bin, doc, text) VALUES ($1::text, convert_to(repeat('A', 40), 'UTF8'),
jsonb_build_object('a', repeat('A', 40)), repeat('A', 40)) ON CONFLICT DO NOTHING`, []any{k}
}

func (raws) Find(k string) (string, []any) {
	return "SELECT id, n, bin, doc, text FROM raws WHERE key = $1::text FOR UPDATE", []any{k}
}

func (raws) Scan(row pgx.Row, _ bool) (*raw, error) {
	r := &raw{}
	if err := row.Scan(&r.ID, &r.N, &r.Bin, &r.Doc, &r.Text); err != nil {
		return nil, err
	}
	return r, nil
}

func (raws) Save(before, after *raw) (string, []any, error) {
	return "UPDATE raws SET n = $2::bigint, bin = $3::bytea, doc = $4::jsonb, text = $5::text WHERE id = $1::bigint",
		[]any{after.ID, after.N, after.Bin, string(after.Doc), string(after.Text)}, nil
}

// TestWithByteSliceFieldsOwnTheirBytes: []byte and json.RawMessage fields
// of the row, read from pgconn's buffer, do not change when fn reads more,
// in every exec mode, and before (Save's) and v (fn's) share no bytes.
func TestWithByteSliceFieldsOwnTheirBytes(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			pool, ctx := setupPool(t, func(cfg *pgxpool.Config) {
				cfg.MaxConns = 1
				cfg.ConnConfig.DefaultQueryExecMode = mode
			})
			if _, err := pool.Exec(ctx, "CREATE TABLE raws (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, key text UNIQUE NOT NULL, n bigint NOT NULL DEFAULT 0, bin bytea, doc jsonb, text text)"); err != nil {
				t.Fatal(err)
			}
			repo := entity.New(pool, raws{})
			var first *raw
			for i := range 3 {
				err := repo.With(ctx, "r", func(ctx context.Context, tx pgx.Tx, r *raw) error {
					if first == nil {
						first = r
					}
					var s string
					if err := tx.QueryRow(ctx, "SELECT repeat('Z', 300)").Scan(&s); err != nil {
						return err
					}
					if !strings.Contains(string(r.Doc), strings.Repeat("A", 40)) || string(r.Bin) != strings.Repeat("A", 40) || string(r.Text) != strings.Repeat("A", 40) {
						t.Errorf("call %d: row changed by fn's query: %q %q %q", i, r.Bin, r.Doc, r.Text)
					}
					r.N++
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			if string(first.Bin) != strings.Repeat("A", 40) || string(first.Text) != strings.Repeat("A", 40) {
				t.Errorf("the first call's row changed since: %q %q", first.Bin, first.Text)
			}
			var bin, text string
			if err := pool.QueryRow(ctx, "SELECT convert_from(bin, 'UTF8'), text FROM raws").Scan(&bin, &text); err != nil {
				t.Fatal(err)
			}
			if bin != strings.Repeat("A", 40) || text != strings.Repeat("A", 40) {
				t.Fatalf("committed %q %q", bin, text)
			}
		})
	}
}
