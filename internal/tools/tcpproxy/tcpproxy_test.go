package tcpproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/paylock/paylock/internal/tools/tcpproxy"
)

// echo starts a line echo server and returns its address.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, p *tcpproxy.Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

func roundTrip(c net.Conn, r *bufio.Reader, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	c.SetDeadline(start.Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err == nil && line != "ping\n" {
		err = errors.New("got " + line)
	}
	return time.Since(start), err
}

func TestProxy(t *testing.T) {
	p, err := tcpproxy.Start(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	t.Run("Forwards", func(t *testing.T) {
		c, r := dial(t, p)
		if _, err := roundTrip(c, r, time.Minute); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Latency", func(t *testing.T) {
		c, r := dial(t, p)
		p.SetLatency(50 * time.Millisecond)
		defer p.SetLatency(0)
		d, err := roundTrip(c, r, time.Minute)
		if err != nil || d < 100*time.Millisecond {
			t.Fatalf("round trip %v, %v; want at least 100ms", d, err)
		}
	})
	t.Run("LatencyOverlaps", func(t *testing.T) {
		// Chunks in flight overlap, as packets on a wire do: ten pings sent
		// at once come back after about one round trip, not ten.
		c, r := dial(t, p)
		// A round trip of 1 s: ten in a row would take 10 s, and the bound
		// below leaves the overlap 4 s of scheduling slack.
		p.SetLatency(500 * time.Millisecond)
		defer p.SetLatency(0)
		c.SetDeadline(time.Now().Add(time.Minute))
		start := time.Now()
		for range 10 {
			if _, err := c.Write([]byte("ping\n")); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond) // separate chunks
		}
		for range 10 {
			if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
				t.Fatalf("%q, %v", line, err)
			}
		}
		if d := time.Since(start); d < time.Second || d >= 5*time.Second {
			t.Fatalf("ten pipelined pings took %v; want one round trip of 1s, not ten", d)
		}
	})
	t.Run("ResetIsAnRST", func(t *testing.T) {
		c, r := dial(t, p)
		if _, err := roundTrip(c, r, time.Minute); err != nil {
			t.Fatal(err)
		}
		p.Reset()
		_, err := roundTrip(c, r, time.Minute)
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("after Reset: %v, want a connection reset", err)
		}
	})
	t.Run("StallIsSilentUntilResume", func(t *testing.T) {
		c, r := dial(t, p)
		if _, err := roundTrip(c, r, time.Minute); err != nil {
			t.Fatal(err)
		}
		p.Stall()
		fresh, freshR := dial(t, p) // opened after the stall: not stalled
		_, err := roundTrip(c, r, 300*time.Millisecond)
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			t.Fatalf("stalled round trip: %v, want a timeout (no FIN, no RST)", err)
		}
		if _, err := roundTrip(fresh, freshR, time.Minute); err != nil {
			t.Fatalf("a connection opened after Stall: %v", err)
		}
		p.Resume()
		c.SetDeadline(time.Now().Add(time.Minute))
		if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("after Resume: %q, %v", line, err)
		}
	})
}

// TestStallReplies: what a client sends still reaches the server (and
// ClientBytes counts it); the answer waits in the proxy until Resume.
func TestStallReplies(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 4)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			got <- line
			c.Write([]byte(line))
		}
	}()
	p, err := tcpproxy.Start(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, r := dial(t, p)
	if _, err := roundTrip(c, r, time.Minute); err != nil {
		t.Fatal(err)
	}
	<-got
	before := p.ClientBytes()
	p.StallReplies()
	c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := c.Write([]byte("held\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-got:
		if line != "held\n" {
			t.Fatalf("server got %q", line)
		}
	case <-time.After(time.Minute):
		t.Fatal("the server got nothing while replies were stalled")
	}
	if n := p.ClientBytes() - before; n != int64(len("held\n")) {
		t.Errorf("ClientBytes grew by %d, want %d", n, len("held\n"))
	}
	c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := r.ReadString('\n'); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read while replies are stalled: %v, want a timeout", err)
	}
	p.Resume()
	c.SetDeadline(time.Now().Add(time.Minute))
	if line, err := r.ReadString('\n'); err != nil || line != "held\n" {
		t.Fatalf("after Resume: %q, %v", line, err)
	}
}
