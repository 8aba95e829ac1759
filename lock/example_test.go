package lock_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
)

func examplePool() *pgxpool.Pool {
	pool, err := pgxpool.New(context.Background(), pgtest.ExampleURL()) // your DATABASE_URL
	if err != nil {
		log.Fatal(err)
	}
	return pool
}

// Ten goroutines increment one counter row through Run: each runs alone, so
// no increment is lost even though each reads and then writes.
func ExampleRun() {
	ctx := context.Background()
	pool := examplePool()
	defer pool.Close()
	pool.Exec(ctx, "CREATE TABLE counters (name text PRIMARY KEY, n int NOT NULL)")

	key := lock.NewKey("counters", "visits")
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			err := lock.Run(ctx, pool, key, func(ctx context.Context, tx pgx.Tx) error {
				var n int
				err := tx.QueryRow(ctx, "SELECT n FROM counters WHERE name = 'visits'").Scan(&n)
				if err == pgx.ErrNoRows {
					_, err = tx.Exec(ctx, "INSERT INTO counters VALUES ('visits', 1)")
					return err
				}
				if err != nil {
					return err
				}
				_, err = tx.Exec(ctx, "UPDATE counters SET n = $1 WHERE name = 'visits'", n+1)
				return err
			})
			if err != nil {
				log.Fatal(err)
			}
		})
	}
	wg.Wait()

	var n, rows int
	pool.QueryRow(ctx, "SELECT max(n), count(*) FROM counters").Scan(&n, &rows)
	fmt.Println("visits:", n, "rows:", rows)
	// Output: visits: 10 rows: 1
}

// A transfer locks both accounts. AcquireAll takes them in one canonical
// order, so a transfer the other way round can't deadlock with this one.
func ExampleAcquireAll() {
	ctx := context.Background()
	pool := examplePool()
	defer pool.Close()

	tx, err := pool.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback(ctx)
	from, to := lock.NewKey("accounts", "alice"), lock.NewKey("accounts", "bob")
	if err := lock.AcquireAll(ctx, tx, to, from); err != nil {
		log.Fatal(err)
	}

	var held int
	tx.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()").Scan(&held)
	fmt.Println("locks held:", held)
	// Output: locks held: 2
}

// Key shows where a lock appears in pg_locks.
func ExampleKey() {
	k := lock.NewKey("payments", "7", "li_123")
	fmt.Println(k)
	fmt.Println(k.ID())
	fmt.Println(k.ClassID(), k.ObjID())
	// Output:
	// payments/7/li_123
	// 1856902557913729806
	// 432343817 3270920974
}

// RunDB serves callers that hold a *sql.DB (sqlx, sqlc, GORM underneath),
// here through pgx's database/sql driver.
func ExampleRunDB() {
	ctx := context.Background()
	db, err := sql.Open("pgx", pgtest.ExampleURL()) // your DATABASE_URL
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	db.ExecContext(ctx, "CREATE TABLE balances (account text PRIMARY KEY, cents bigint NOT NULL)")

	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			err := lock.RunDB(ctx, db, lock.NewKey("balances", "alice"), func(ctx context.Context, tx *sql.Tx) error {
				var cents int64
				err := tx.QueryRowContext(ctx, "SELECT cents FROM balances WHERE account = 'alice'").Scan(&cents)
				if errors.Is(err, sql.ErrNoRows) {
					_, err = tx.ExecContext(ctx, "INSERT INTO balances VALUES ('alice', 100)")
					return err
				}
				if err != nil {
					return err
				}
				_, err = tx.ExecContext(ctx, "UPDATE balances SET cents = $1 WHERE account = 'alice'", cents+100)
				return err
			})
			if err != nil {
				log.Fatal(err)
			}
		})
	}
	wg.Wait()

	var cents int64
	db.QueryRowContext(ctx, "SELECT cents FROM balances").Scan(&cents)
	fmt.Println("alice:", cents)
	// Output: alice: 500
}
