// Package pgbouncer starts a throwaway PgBouncer in front of a PostgreSQL
// server, for tests that check paylock behind a transaction-mode pooler. Like
// internal/tools/pgserver, it runs the binary installed on the machine (Debian:
// apt-get install -y pgbouncer) as an unprivileged user when the caller is
// root, in a temporary directory removed by Stop.
package pgbouncer

import (
	"github.com/paylock/paylock/internal/tools/pgserver"

	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// ErrNoBinary is returned by Start when no pgbouncer binary is installed.
var ErrNoBinary = errors.New("pgbouncer: binary not found on PATH or in /usr/sbin (apt-get install -y pgbouncer)")

// Options configure the pooler.
type Options struct {
	// PoolMode is "transaction" (the default), "session" or "statement".
	PoolMode string
	// PoolSize is the number of server connections per database and user;
	// zero means 20.
	PoolSize int
}

// Bouncer is a running PgBouncer.
type Bouncer struct {
	// Port is the TCP port it listens on, on 127.0.0.1.
	Port int

	dir    string
	cmd    *exec.Cmd
	exited chan struct{}
	log    bytes.Buffer
}

// Find returns the path of the pgbouncer binary.
func Find() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer", nil
	}
	return "", ErrNoBinary
}

// Start runs a pgbouncer that forwards every database to the server at
// host:port with trust authentication for user. It blocks until the pooler
// accepts connections or ctx is done.
func Start(ctx context.Context, host string, port int, user string, opts Options) (*Bouncer, error) {
	bin, err := Find()
	if err != nil {
		return nil, err
	}
	if opts.PoolMode == "" {
		opts.PoolMode = "transaction"
	}
	if opts.PoolSize == 0 {
		opts.PoolSize = 20
	}
	dir, err := os.MkdirTemp("", "paylock-pgbouncer-")
	if err != nil {
		return nil, err
	}
	b := &Bouncer{dir: dir}
	if err := b.start(ctx, bin, host, port, user, opts); err != nil {
		b.Stop()
		return nil, err
	}
	return b, nil
}

func (b *Bouncer) start(ctx context.Context, bin, host string, port int, dbUser string, opts Options) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	b.Port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
default_pool_size = %d
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
server_reset_query =
`, host, port, b.Port, filepath.Join(b.dir, "users.txt"), opts.PoolMode, opts.PoolSize)
	files := map[string]string{"pgbouncer.ini": ini, "users.txt": strconv.Quote(dbUser) + ` ""` + "\n"}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(b.dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	b.cmd = exec.Command(bin, filepath.Join(b.dir, "pgbouncer.ini"))
	b.cmd.Stdout, b.cmd.Stderr = &b.log, &b.log
	b.cmd.Dir = b.dir // not the caller's, which its user may not be able to read
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if os.Geteuid() == 0 { // pgbouncer refuses to run as root
		cred, err := pgserver.Unprivileged()
		if err != nil {
			return err
		}
		b.cmd.SysProcAttr.Credential = cred
		os.Chmod(b.dir, 0o755)
	}
	if err := b.cmd.Start(); err != nil {
		return fmt.Errorf("pgbouncer: start: %w", err)
	}
	b.exited = make(chan struct{})
	go func() { b.cmd.Wait(); close(b.exited) }()
	deadline := time.After(15 * time.Second)
	for {
		c, err := net.Dial("tcp", b.Addr())
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-b.exited:
			return fmt.Errorf("pgbouncer exited: %s", b.log.String())
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return fmt.Errorf("pgbouncer: not listening after 15s: %s", b.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Addr returns "127.0.0.1:port".
func (b *Bouncer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.Port)) }

// Stop stops pgbouncer and removes its directory.
func (b *Bouncer) Stop() error {
	if b.cmd != nil && b.cmd.Process != nil && b.exited != nil {
		b.cmd.Process.Signal(syscall.SIGTERM) // immediate shutdown; SIGINT would wait for clients
		select {
		case <-b.exited:
		case <-time.After(5 * time.Second):
			b.cmd.Process.Kill()
			<-b.exited
		}
	}
	return os.RemoveAll(b.dir)
}
