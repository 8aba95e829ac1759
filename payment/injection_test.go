package payment_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// hostile are line item ids an external API could send that would do harm if
// any of them reached SQL as text: the only place a key does is the comment
// of the lock statement (/*paylock_key='...'*/), where it is escaped; the
// values themselves go as parameters.
var hostile = []string{
	"'*/ DROP TABLE payments; --",
	"*/ SELECT pg_sleep(10) /*",
	"li'); DELETE FROM payments; --",
	"li\\'; --",
	"$1 $$ $tag$ ;",
	"%27%2A%2F",
	"li\n--\r\n*/",
	"\u202e'*/\ufeff",
	strings.Repeat("*/'", payment.MaxLineItemIDLen/3),
}

// TestWithHostileKeys: every hostile key makes exactly its own row, with its
// line item id stored verbatim; the table survives; and while a caller waits
// for such a key, pg_stat_activity shows the statement with the escaped key
// still inside its comment.
func TestWithHostileKeys(t *testing.T) {
	t.Parallel()
	repo, pool := newRepo(t, nil)
	ctx := pgtest.Context(t, time.Minute)
	for _, li := range hostile {
		k := payment.Key{ServiceID: 1, LineItemID: li}
		if err := repo.With(ctx, k, func(_ context.Context, _ pgx.Tx, p *payment.Payment) error {
			p.Status = li
			return nil
		}); err != nil {
			t.Fatalf("With(%q): %v", li, err)
		}
		p, err := repo.Get(ctx, k)
		if err != nil || p.LineItemID != li || p.Status != li {
			t.Fatalf("Get(%q) = %+v, %v", li, p, err)
		}
	}
	if n := countRows(t, pool, "payments"); n != len(hostile) {
		t.Fatalf("%d rows, want %d", n, len(hostile))
	}

	// A waiter on a hostile key: its statement, comment and all, is what
	// the server is running, and the comment holds the escaped key.
	k := payment.Key{ServiceID: 1, LineItemID: hostile[0]}
	release, locked := make(chan struct{}), make(chan struct{})
	done := make(chan error, 2)
	go func() {
		done <- repo.With(ctx, k, func(context.Context, pgx.Tx, *payment.Payment) error {
			close(locked)
			<-release
			return nil
		})
	}()
	<-locked
	go func() {
		done <- repo.With(ctx, k, func(context.Context, pgx.Tx, *payment.Payment) error { return nil })
	}()
	want := "/*paylock_key='" + k.LockKey().String() + "'*/"
	var query string
	deadline := time.Now().Add(time.Minute) // only a hang takes that long
	for {
		err := pool.QueryRow(ctx, `SELECT coalesce(max(query), '') FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'`).Scan(&query)
		if err != nil {
			t.Fatal(err)
		}
		// Until the waiter's own statement shows: under load the row may
		// still show a statement of the same pipeline.
		if strings.HasSuffix(query, want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if !strings.HasSuffix(query, want) || strings.Count(query, "*/") != 1 {
		t.Fatalf("waiting statement %q, want it to end in %q with no other comment end", query, want)
	}
	if back, err := lock.ParseKey(k.LockKey().String()); err != nil || back != k.LockKey() {
		t.Fatalf("the comment's key does not parse back: %v, %v", back, err)
	}
}
