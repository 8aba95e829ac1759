package entity

import (
	"context"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/paylock/paylock/internal/entityopt"
)

// TestOptionSealed: code outside the module cannot make an Option that
// turns the per-key queue off. It can't name entityopt, but it can make a
// value of type Option (reflect.MakeFunc, or a generic function whose type
// arguments Go infers) and call every method of the Config it is handed,
// with zero arguments of whatever types they take.
func TestOptionSealed(t *testing.T) {
	outsider := reflect.MakeFunc(reflect.TypeFor[Option](), func(args []reflect.Value) []reflect.Value {
		c := args[0]
		for i := range c.NumMethod() {
			m := c.Method(i)
			in := make([]reflect.Value, m.Type().NumIn())
			for j := range in {
				in[j] = reflect.New(m.Type().In(j)).Elem()
			}
			m.Call(in)
		}
		return nil
	}).Interface().(Option)
	pool, err := pgxpool.New(context.Background(), "host=127.0.0.1 port=1") // never connects
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if r := New[int, int](pool, nil, outsider); r.queue == nil {
		t.Fatal("an Option made outside the module turned the per-key queue off")
	}
	if r := New[int, int](pool, nil, entityopt.WithoutKeyQueue()); r.queue != nil {
		t.Fatal("entityopt.WithoutKeyQueue left the per-key queue on")
	}
}
