// Package otelentity reports paylock's With calls to OpenTelemetry: a span
// around every call and histograms of lock wait and hold times. It is a
// package of its own so that the core pulls in no OpenTelemetry dependency.
//
//	hooks, err := otelentity.Hooks()
//	repo := payment.NewRepository(pool, entity.WithHooks(hooks))
//
// Spans are named "paylock.with <namespace>" and carry paylock.namespace,
// paylock.outcome, paylock.created, paylock.lock.granted,
// paylock.lock.wait_ms and, under entity.WithGroupCommit, paylock.group_size
// (the calls whose fn ran in the call's transaction); the entity's key is recorded (paylock.key) only with
// WithKeyAttribute, since it may name a customer. Metrics: paylock.lock.wait
// (also for a wait that ended without the lock, a lock timeout say) and
// paylock.lock.hold (only for calls that were granted the lock), in seconds,
// with paylock.namespace and paylock.outcome attributes.
package otelentity

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/paylock/paylock/entity"
	"github.com/paylock/paylock/lock"
)

const scope = "github.com/paylock/paylock"

// Option configures Hooks.
type Option func(*config)

type config struct {
	tp      trace.TracerProvider
	mp      metric.MeterProvider
	withKey bool
}

// WithTracerProvider sets the tracer provider; otel.GetTracerProvider() by
// default.
func WithTracerProvider(tp trace.TracerProvider) Option { return func(c *config) { c.tp = tp } }

// WithMeterProvider sets the meter provider; otel.GetMeterProvider() by
// default.
func WithMeterProvider(mp metric.MeterProvider) Option { return func(c *config) { c.mp = mp } }

// WithKeyAttribute records the entity's key on spans as paylock.key.
func WithKeyAttribute() Option { return func(c *config) { c.withKey = true } }

// Hooks returns entity.Hooks that trace and measure every With call.
func Hooks(opts ...Option) (entity.Hooks, error) {
	c := config{tp: otel.GetTracerProvider(), mp: otel.GetMeterProvider()}
	for _, o := range opts {
		o(&c)
	}
	tracer := c.tp.Tracer(scope)
	meter := c.mp.Meter(scope)
	wait, err := meter.Float64Histogram("paylock.lock.wait", metric.WithUnit("s"),
		metric.WithDescription("Time PostgreSQL made a With call wait for its lock."))
	if err != nil {
		return entity.Hooks{}, err
	}
	hold, err := meter.Float64Histogram("paylock.lock.hold", metric.WithUnit("s"),
		metric.WithDescription("Time a With call held its lock, to the end of its commit or rollback."))
	if err != nil {
		return entity.Hooks{}, err
	}
	return entity.Hooks{
		Start: func(ctx context.Context, ns string, key lock.Key) context.Context {
			attrs := []attribute.KeyValue{attribute.String("paylock.namespace", ns)}
			if c.withKey {
				attrs = append(attrs, attribute.String("paylock.key", key.String()))
			}
			ctx, _ = tracer.Start(ctx, "paylock.with "+ns, trace.WithAttributes(attrs...), trace.WithSpanKind(trace.SpanKindClient))
			return ctx
		},
		Done: func(ctx context.Context, ev entity.Event) {
			labels := metric.WithAttributes(attribute.String("paylock.namespace", ev.Namespace),
				attribute.String("paylock.outcome", string(ev.Outcome)))
			granted := !ev.Granted.IsZero()
			if granted || ev.Wait > 0 {
				wait.Record(ctx, ev.Wait.Seconds(), labels)
			}
			if granted {
				hold.Record(ctx, ev.Hold.Seconds(), labels)
			}
			span := trace.SpanFromContext(ctx)
			span.SetAttributes(attribute.String("paylock.outcome", string(ev.Outcome)),
				attribute.Bool("paylock.created", ev.Created),
				attribute.Bool("paylock.lock.granted", granted),
				attribute.Float64("paylock.lock.wait_ms", float64(ev.Wait.Microseconds())/1000))
			if ev.GroupSize > 0 {
				span.SetAttributes(attribute.Int("paylock.group_size", ev.GroupSize))
			}
			if ev.Err != nil {
				span.RecordError(ev.Err)
				span.SetStatus(codes.Error, string(ev.Outcome))
			}
			span.End()
		},
	}, nil
}
