package bench

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestProxy: bytes pass through unchanged, and a round trip through the proxy
// takes at least the round-trip time it adds.
func TestProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // an echo server
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	const rtt = 2 * time.Millisecond
	p, err := startProxy(ln.Addr().String(), rtt)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	c, err := net.Dial("tcp", p.addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var fastest time.Duration = time.Hour
	buf := make([]byte, 5)
	for i := range 20 {
		msg := []byte{'p', 'i', 'n', 'g', byte('a' + i)}
		at := time.Now()
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		fastest = min(fastest, time.Since(at))
		if !bytes.Equal(buf, msg) {
			t.Fatalf("echo %q, want %q", buf, msg)
		}
	}
	t.Logf("fastest round trip %v through a proxy adding %v", fastest, rtt)
	if fastest < rtt {
		t.Errorf("a round trip took %v, less than the %v the proxy adds", fastest, rtt)
	}
}
