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
	"github.com/paylock/paylock/internal/pgtest"
	"github.com/paylock/paylock/payment"
)

func TestMain(m *testing.M) { pgtest.Main(m, nil) }

func TestSpansAndHistograms(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.Pool(t, nil)
	if err := payment.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	pool.Exec(ctx, "INSERT INTO services VALUES (1, 'api')")

	spans := tracetest.NewSpanRecorder()
	reader := sdkmetric.NewManualReader()
	hooks, err := otelentity.Hooks(
		otelentity.WithTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))),
		otelentity.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	if err != nil {
		t.Fatal(err)
	}
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
