package pgtest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/ory/dockertest/v3"
)

// startDocker runs a postgres container when a Docker engine answers.
func startDocker() (connURL string, stop func() error, err error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return "", nil, err
	}
	if err := pool.Client.Ping(); err != nil {
		return "", nil, fmt.Errorf("no engine answers: %w", err)
	}
	res, err := pool.Run("postgres", "16", []string{
		"POSTGRES_USER=paylock", "POSTGRES_PASSWORD=paylock", "POSTGRES_DB=postgres",
		"POSTGRES_HOST_AUTH_METHOD=trust",
	})
	if err != nil {
		return "", nil, err
	}
	res.Expire(30 * 60) // the engine removes it even if this process dies
	connURL = fmt.Sprintf("postgres://paylock:paylock@localhost:%s/postgres?sslmode=disable", res.GetPort("5432/tcp"))
	pool.MaxWait = 90 * time.Second
	if err := pool.Retry(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := pgconn.Connect(ctx, connURL)
		if err != nil {
			return err
		}
		return c.Close(ctx)
	}); err != nil {
		return "", nil, errors.Join(err, pool.Purge(res))
	}
	return connURL, func() error { return pool.Purge(res) }, nil
}
