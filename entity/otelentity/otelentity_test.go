package otelentity_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/entity/otelentity"
	"github.com/paylock/paylock/internal/testing/paytest"
	"github.com/paylock/paylock/internal/testing/pgtest"
	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

// recorded returns Hooks that record their spans in spans and their metrics
// in reader.
func recorded(t *testing.T) (*tracetest.SpanRecorder, *sdkmetric.ManualReader, entity.Hooks) {
	t.Helper()
	spans := tracetest.NewSpanRecorder()
	reader := sdkmetric.NewManualReader()
	hooks, err := otelentity.Hooks(
		otelentity.WithTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))),
		otelentity.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	if err != nil {
		t.Fatal(err)
	}
	return spans, reader, hooks
}

func TestSpansAndHistograms(t *testing.T) {
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t)
	spans, reader, hooks := recorded(t)
	repo := payment.NewRepository(pool, entity.WithHooks(hooks))
	key := payment.Key{ServiceID: 1, LineItemID: "li_secret_customer"}

	var fnSpan trace.SpanContext
	if err := repo.With(ctx, key, func(ctx context.Context, _ pgx.Tx, p *payment.Payment) error {
		fnSpan = trace.SpanContextFromContext(ctx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	repo.With(ctx, key, func(context.Context, pgx.Tx, *payment.Payment) error { return errors.New("boom") })

	ended := spans.Ended()
	if len(ended) != 2 {
		t.Fatalf("%d spans, want 2", len(ended))
	}
	ok, failed := ended[0], ended[1]
	if ok.Name() != "paylock.with payments" || ok.SpanContext().SpanID() != fnSpan.SpanID() {
		t.Errorf("span %q; fn ran in span %v, want %v", ok.Name(), fnSpan.SpanID(), ok.SpanContext().SpanID())
	}
	attrs := map[attribute.Key]attribute.Value{}
	for _, a := range ok.Attributes() {
		attrs[a.Key] = a.Value
	}
	if attrs["paylock.namespace"].AsString() != "payments" || attrs["paylock.outcome"].AsString() != "ok" ||
		!attrs["paylock.created"].AsBool() {
		t.Errorf("attributes %v", attrs)
	}
	if _, leaked := attrs["paylock.key"]; leaked {
		t.Error("the raw key was recorded without WithKeyAttribute")
	}
	if failed.Status().Code != codes.Error {
		t.Errorf("failed call's span status %v", failed.Status())
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
				counts[m.Name] += dp.Count
			}
		}
	}
	if counts["paylock.lock.wait"] != 2 || counts["paylock.lock.hold"] != 2 {
		t.Fatalf("histogram counts %v, want 2 each", counts)
	}
}

// TestLockTimeoutIsAWaitWithoutHold: a call whose wait ended in a lock
// timeout records its wait, on the span and in paylock.lock.wait, marks the
// span not granted, and records no hold.
func TestLockTimeoutIsAWaitWithoutHold(t *testing.T) {
	ctx := pgtest.Context(t, time.Minute)
	pool := paytest.Pool(t)
	spans, reader, hooks := recorded(t)
	const timeout = 200 * time.Millisecond
	repo := payment.NewRepository(pool, entity.WithHooks(hooks), entity.WithLockOptions(lock.Options{LockTimeout: timeout}))
	key := payment.Key{ServiceID: 1, LineItemID: "li_timeout"}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := lock.Acquire(ctx, tx, key.LockKey()); err != nil {
		t.Fatal(err)
	}
	noop := func(context.Context, pgx.Tx, *payment.Payment) error { return nil }
	if err := repo.With(ctx, key, noop); !errors.Is(err, lock.ErrLockTimeout) {
		t.Fatalf("With = %v, want a lock timeout", err)
	}

	ended := spans.Ended()
	if len(ended) != 1 {
		t.Fatalf("%d spans, want 1", len(ended))
	}
	attrs := map[attribute.Key]attribute.Value{}
	for _, a := range ended[0].Attributes() {
		attrs[a.Key] = a.Value
	}
	if attrs["paylock.outcome"].AsString() != "timeout" || attrs["paylock.lock.granted"].AsBool() ||
		attrs["paylock.lock.wait_ms"].AsFloat64() < float64(timeout.Milliseconds()) {
		t.Errorf("span attributes %v; want a timeout, not granted, waiting at least %v", attrs, timeout)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	counts, sums := map[string]uint64{}, map[string]float64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
				counts[m.Name] += dp.Count
				sums[m.Name] += dp.Sum
			}
		}
	}
	if counts["paylock.lock.wait"] != 1 || sums["paylock.lock.wait"] < timeout.Seconds() || counts["paylock.lock.hold"] != 0 {
		t.Fatalf("histogram counts %v, sums %v; want one wait of at least %v and no hold", counts, sums, timeout)
	}
}

// TestGroupCommitSpans: under entity.WithGroupCommit every call still gets
// its own span, in which its fn runs, with the size of its group.
func TestGroupCommitSpans(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.Pool(t, nil)
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	pool.Exec(ctx, "INSERT INTO services VALUES (1, 'api')")
	spans := tracetest.NewSpanRecorder()
	hooks, err := otelentity.Hooks(otelentity.WithTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))))
	if err != nil {
		t.Fatal(err)
	}
	repo := payment.NewRepository(pool, entity.WithHooks(hooks), entity.WithGroupCommit(8))
	key := payment.Key{ServiceID: 1, LineItemID: "li_group"}
	const n = 16
	fnSpans := make(chan trace.SpanID, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			errs <- repo.With(ctx, key, func(ctx context.Context, _ pgx.Tx, p *payment.Payment) error {
				fnSpans <- trace.SpanContextFromContext(ctx).SpanID()
				p.AmountCents++
				return nil
			})
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ended := spans.Ended()
	if len(ended) != n {
		t.Fatalf("%d spans, want %d", len(ended), n)
	}
	ids := map[trace.SpanID]bool{}
	for _, s := range ended {
		ids[s.SpanContext().SpanID()] = true
		size := 0
		for _, a := range s.Attributes() {
			if a.Key == "paylock.group_size" {
				size = int(a.Value.AsInt64())
			}
		}
		if size < 1 || size > 8 {
			t.Errorf("span %v: group size %d", s.SpanContext().SpanID(), size)
		}
	}
	for range n {
		if id := <-fnSpans; !ids[id] {
			t.Errorf("an fn ran in span %v, not its call's", id)
		}
	}
}
