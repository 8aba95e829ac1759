package lock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/internal/testing/racetest"
	"github.com/paylock/paylock/lock"
)

// incrementSQL is the race's operation written for database/sql: find,
// else insert, then read-modify-write.
func incrementSQL(ctx context.Context, tx *sql.Tx, k int, op string) (racetest.Call, error) {
	c := racetest.Call{Key: fmt.Sprint(k), Op: op}
	var amount int64
	var data []byte
	err := tx.QueryRowContext(ctx, "SELECT id, amount, data FROM counters WHERE k = $1 ORDER BY id LIMIT 1", k).Scan(&c.ID, &amount, &data)
	if errors.Is(err, sql.ErrNoRows) {
		c.Created = true
		err = tx.QueryRowContext(ctx, "INSERT INTO counters (k) VALUES ($1) RETURNING id, amount, data", k).Scan(&c.ID, &amount, &data)
	}
	if err != nil {
		return c, err
	}
	if data, err = racetest.AppendOp(data, op); err != nil {
		return c, err
	}
	_, err = tx.ExecContext(ctx, "UPDATE counters SET amount = $2, data = $3 WHERE id = $1", c.ID, amount+1, data)
	return c, err
}

func auditCounters(t *testing.T, ctx context.Context, db *sql.DB, calls []racetest.Call) racetest.Report {
	t.Helper()
	rows, err := db.QueryContext(ctx, "SELECT k::text, amount, data FROM counters")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []racetest.Row
	for rows.Next() {
		var r racetest.Row
		if err := rows.Scan(&r.Key, &r.Amount, &r.Ops); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	return racetest.Audit(calls, got, true)
}

// TestRunDBRace is the race of the repositories, through database/sql and
// pgx's stdlib driver: first without the lock (it must fail), then in RunDB
// under the same race, 32 goroutines x 50 calls on 5 keys. More calls test
// nothing more (each call appends to its row's op list, so their cost grows
// with the square of the calls per key).
func TestRunDBRace(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, 3*time.Minute)
	db, err := sql.Open("pgx", pgtest.DB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(40)
	if _, err := db.ExecContext(ctx, "CREATE TABLE counters (id bigserial PRIMARY KEY, k int NOT NULL, amount bigint NOT NULL DEFAULT 0, data jsonb)"); err != nil {
		t.Fatal(err)
	}
	key := func(k int) lock.Key { return lock.NewKey("counters", fmt.Sprint(k)) }

	naive, err := racetest.Hammer(ctx, "n", 32, 50, 5, func(ctx context.Context, k int, op string) (racetest.Call, error) {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return racetest.Call{}, err
		}
		defer tx.Rollback()
		c, err := incrementSQL(ctx, tx, k, op)
		if err != nil {
			return c, err
		}
		return c, tx.Commit()
	})
	if err != nil {
		t.Fatal(err)
	}
	report := auditCounters(t, ctx, db, naive)
	if len(report.Problems) == 0 {
		t.Fatalf("without the lock: %v; the race is too weak to prove anything", report)
	}
	t.Logf("database/sql without the lock: %v", report)

	if _, err := db.ExecContext(ctx, "TRUNCATE counters"); err != nil {
		t.Fatal(err)
	}
	done, err := racetest.Hammer(ctx, "s", 32, 50, 5, func(ctx context.Context, k int, op string) (c racetest.Call, err error) {
		err = lock.RunDB(ctx, db, key(k), func(ctx context.Context, tx *sql.Tx) error {
			c, err = incrementSQL(ctx, tx, k, op)
			return err
		})
		return c, err
	})
	if err != nil {
		t.Fatal(err)
	}
	report = auditCounters(t, ctx, db, done)
	for _, p := range report.Problems {
		t.Error(p)
	}
	t.Logf("database/sql with RunDB: %v", report)
}

func TestAcquireTx(t *testing.T) {
	t.Parallel()
	ctx := pgtest.Context(t, time.Minute)
	url := pgtest.DB(t)
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	key := lock.NewKey("test", "sql")

	tx1, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx1.Rollback()
	if err := lock.AcquireTx(ctx, tx1, key); err != nil {
		t.Fatal(err)
	}
	tx2, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx2.Rollback()
	if ok, err := lock.TryAcquireTx(ctx, tx2, key); err != nil || ok {
		t.Fatalf("TryAcquireTx while held = %v, %v; want false", ok, err)
	}
	// database/sql and pgx callers share the lock.
	if err := (lock.Options{LockTimeout: 50 * time.Millisecond}).Run(ctx, pool, key, func(context.Context, pgx.Tx) error { return nil }); !errors.Is(err, lock.ErrLockTimeout) {
		t.Fatalf("pgx Run while a database/sql tx holds the key = %v, want ErrLockTimeout", err)
	}
	waitCtx, cancelWait := context.WithCancel(ctx)
	got := make(chan error, 1)
	go func() {
		got <- lock.RunDB(waitCtx, db, key, func(context.Context, *sql.Tx) error { return nil })
	}()
	waitForWaiters(t, pool, key, 1)
	cancelWait()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("RunDB cancelled while waiting = %v, want context.Canceled", err)
	}
	waitForWaiters(t, pool, key, 0) // the server drops the abandoned wait
	if err := tx1.Commit(); err != nil {
		t.Fatal(err)
	}
	if ok, err := lock.TryAcquireTx(ctx, tx2, key); err != nil || !ok {
		t.Fatalf("TryAcquireTx after release = %v, %v; want true", ok, err)
	}
	if err := lock.AcquireTx(ctx, tx2, lock.NewKey("BAD")); !errors.Is(err, lock.ErrInvalidKey) {
		t.Fatalf("AcquireTx(invalid) = %v", err)
	}
}
