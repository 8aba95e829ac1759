// Package pgserver starts and stops a throwaway PostgreSQL cluster from the
// server binaries installed on the machine. The tests (through internal/testing/pgtest)
// and `paylock demo` use it, so both run against the same kind of server.
//
// The cluster lives in a temporary directory, listens on a Unix socket in that
// directory and on a free TCP port on 127.0.0.1, trusts local connections and is
// removed by Stop. initdb and postgres refuse to run as root; when the current
// process is root, both (and pg_basebackup) run as the unprivileged
// "postgres" user (or "nobody").
//
// For failover tests, Standby clones a running server into a streaming hot
// standby, Shutdown stops a server as a crash would, and Promote turns the
// standby into the primary.
package pgserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoBinaries is returned by Start when initdb and postgres can't be found.
var ErrNoBinaries = errors.New("pgserver: initdb and postgres not found on PATH or under /usr/lib/postgresql/*/bin")

// ErrNoBasebackup is returned by Standby when the server's build has no
// pg_basebackup beside its postgres (the builds make test-versions uses).
var ErrNoBasebackup = errors.New("pgserver: this PostgreSQL build has no pg_basebackup")

// Options tunes the cluster. The zero value is a durable server (fsync on).
type Options struct {
	// Fast turns off fsync and full_page_writes: right for unit tests, wrong
	// for benchmarks that should reflect a real commit.
	Fast bool
	// Settings are extra "name=value" server settings passed with -c.
	Settings []string
	// BinDir is the directory of initdb and postgres; empty means
	// FindBinDir's. Any version starts, older than paylock supports too: its
	// callers refuse those once connected (internal/tools/pgversion).
	BinDir string
}

// Server is a running throwaway cluster.
type Server struct {
	// Dir holds the data directory and the Unix socket.
	Dir string
	// Port is the TCP (and socket) port.
	Port int
	// User is the cluster's superuser role.
	User string

	binDir string
	cmd    *exec.Cmd
	exited chan struct{}
	log    *bytes.Buffer
	cred   *syscall.Credential
	opts   Options
}

// FindBinDir returns the directory holding initdb and postgres: the one on
// PATH, else the newest /usr/lib/postgresql/N/bin.
func FindBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

func version(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Start initialises and starts a cluster. It blocks until the server accepts
// connections or ctx is done.
func Start(ctx context.Context, opts Options) (*Server, error) {
	binDir := opts.BinDir
	if binDir == "" {
		var err error
		if binDir, err = FindBinDir(); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "paylock-pg-")
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, User: "paylock", binDir: binDir, opts: opts}
	if err := s.start(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) start(ctx context.Context) error {
	if os.Geteuid() == 0 {
		cred, err := Unprivileged()
		if err != nil {
			return err
		}
		s.cred = cred
		if err := os.Chown(s.Dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return err
		}
	}
	initdb := s.command(ctx, "initdb", "-D", s.dataDir(), "-U", s.User, "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("pgserver: initdb: %w: %s", err, lastLines(out, 5))
	}
	return s.listen(ctx)
}

// listen starts postgres on a free port.
func (s *Server) listen(ctx context.Context) error {
	var lastErr error
	for range 3 { // a free port can be taken by someone else before we bind it
		s.Port, lastErr = freePort()
		if lastErr != nil {
			return lastErr
		}
		if lastErr = s.run(ctx); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

// run starts postgres and waits until it accepts connections.
func (s *Server) run(ctx context.Context) error {
	args := []string{"-D", s.dataDir(), "-p", strconv.Itoa(s.Port), "-k", s.Dir,
		"-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300",
		"-c", "shared_buffers=128MB", "-c", "max_locks_per_transaction=256"}
	if s.opts.Fast {
		args = append(args, "-c", "fsync=off", "-c", "full_page_writes=off")
	}
	for _, kv := range s.opts.Settings {
		args = append(args, "-c", kv)
	}
	// Not CommandContext: the server outlives the ctx that started it.
	s.cmd = s.command(context.Background(), "postgres", args...)
	s.log = new(bytes.Buffer)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("pgserver: start postgres: %w", err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()

	deadline := time.After(60 * time.Second)
	for {
		c, err := pgconn.Connect(ctx, s.ConnString("postgres"))
		if err == nil {
			c.Close(ctx)
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("pgserver: postgres exited: %s", lastLines(s.log.Bytes(), 5))
		case <-ctx.Done():
			s.stop(syscall.SIGQUIT)
			return ctx.Err()
		case <-deadline:
			s.stop(syscall.SIGQUIT)
			return fmt.Errorf("pgserver: postgres not ready after 60s: %s", lastLines(s.log.Bytes(), 5))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, name), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	// In a directory the server's user owns, never the caller's: a postgres
	// started where it can't read its working directory can't find its own
	// executable's path, and so neither its share directory nor its message
	// translations (lc_messages then translates only part of each message).
	cmd.Dir = s.Dir
	// Own process group, so a Ctrl-C meant for the caller does not reach the
	// server mid-test; and a SIGQUIT (immediate shutdown) if the caller dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGQUIT, Credential: s.cred}
	return cmd
}

func (s *Server) dataDir() string { return filepath.Join(s.Dir, "data") }

// ConnString returns a URL for database db over TCP.
func (s *Server) ConnString(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", s.User, s.Port, db)
}

// Restart stops the server with the given shutdown mode ("fast" or
// "immediate") and starts it again on the same port and data directory.
func (s *Server) Restart(ctx context.Context, mode string) error {
	if err := s.Shutdown(mode); err != nil {
		return err
	}
	return s.run(ctx)
}

// Shutdown stops the server and keeps its directory: "fast" rolls back open
// transactions and checkpoints (pg_ctl stop -m fast, SIGINT); "immediate"
// makes every server process exit at once without a checkpoint, as a crash
// would (pg_ctl stop -m immediate, SIGQUIT). It blocks until the server has
// exited. Stop still removes the directory afterwards.
func (s *Server) Shutdown(mode string) error {
	sig := syscall.SIGINT
	if mode == "immediate" {
		sig = syscall.SIGQUIT
	}
	return s.stop(sig)
}

// Standby clones s with pg_basebackup -R (streaming the WAL it needs and
// writing primary_conninfo and standby.signal) into a new directory and
// starts it as a hot standby of s, on a free port, with opts. It blocks until
// the standby accepts (read-only) connections or ctx is done. opts are the
// standby's own: they become the settings of the primary it turns into when
// promoted. Stop it as any Server. A build without pg_basebackup gives an
// error matching ErrNoBasebackup.
func (s *Server) Standby(ctx context.Context, opts Options) (*Server, error) {
	if _, err := os.Stat(filepath.Join(s.binDir, "pg_basebackup")); err != nil {
		return nil, fmt.Errorf("%w (%s)", ErrNoBasebackup, s.binDir)
	}
	dir, err := os.MkdirTemp("", "paylock-pg-")
	if err != nil {
		return nil, err
	}
	sb := &Server{Dir: dir, User: s.User, binDir: s.binDir, opts: opts, cred: s.cred}
	if sb.cred != nil {
		if err := os.Chown(dir, int(sb.cred.Uid), int(sb.cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	backup := sb.command(ctx, "pg_basebackup", "-D", sb.dataDir(), "-R", "-X", "stream",
		"--checkpoint=fast", "--no-sync", "-h", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-U", s.User)
	if out, err := backup.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgserver: pg_basebackup: %w: %s", err, lastLines(out, 5))
	}
	if err := sb.listen(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return sb, nil
}

// Promote turns a standby into a primary (SELECT pg_promote()) and blocks
// until it accepts writes, for at most a minute, or ctx is done.
func (s *Server) Promote(ctx context.Context) error {
	c, err := pgconn.Connect(ctx, s.ConnString("postgres"))
	if err != nil {
		return fmt.Errorf("pgserver: promote: %w", err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	res, err := c.Exec(ctx, "SELECT pg_promote(true, 60)").ReadAll()
	if err != nil {
		return fmt.Errorf("pgserver: promote: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "t" {
		return errors.New("pgserver: promote: not promoted within 60s")
	}
	return nil
}

// ConnStringFailover returns a URL for database db that names every server
// in servers, in order, with target_session_attrs=read-write: pgx tries them
// in turn and keeps the first that accepts writes, so a new connection finds
// whichever one is the primary.
func ConnStringFailover(db string, servers ...*Server) string {
	hosts := make([]string, len(servers))
	for i, s := range servers {
		hosts[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
	}
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable&target_session_attrs=read-write",
		servers[0].User, strings.Join(hosts, ","), db)
}

// Stop shuts the server down (fast shutdown) and removes its directory.
func (s *Server) Stop() error {
	err := s.stop(syscall.SIGINT)
	if rmErr := os.RemoveAll(s.Dir); err == nil {
		err = rmErr
	}
	return err
}

func (s *Server) stop(sig syscall.Signal) error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	select {
	case <-s.exited:
		return nil
	default:
	}
	s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
		return nil
	case <-time.After(15 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
		return errors.New("pgserver: postgres did not stop within 15s; killed")
	}
}

// Unprivileged returns the credentials of the user initdb and postgres (and
// the tests' pgbouncer) run as when the caller is root: postgres, else nobody.
func Unprivileged() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("pgserver: running as root and neither a postgres nor a nobody user exists to run the server as")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
