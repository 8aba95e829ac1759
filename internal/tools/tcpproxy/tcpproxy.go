// Package tcpproxy is a small in-process TCP proxy that puts a network
// between a client and a server on one machine: added latency, and the
// faults tests need, a connection reset (RST) and a silent stall in which no
// byte moves and no FIN is sent, as when a cable is cut or a host freezes.
//
// `paylock bench --latency` uses it to give loopback a round-trip time; the
// fault tests use it to break connections under the library.
//
// Latency delays each chunk of bytes from the moment it arrives, and chunks
// in flight overlap, as packets on a wire do: bandwidth is not limited.
// Faults apply to every connection the proxy holds at the time; give each
// client that should be treated differently its own Proxy. ClientBytes lets
// a test wait for a client's message to reach the proxy before it acts.
package tcpproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards TCP connections from its own address to a target. It is
// safe for concurrent use.
type Proxy struct {
	ln      net.Listener
	target  string
	latency atomic.Int64 // nanoseconds added to each chunk, each way
	fromCli atomic.Int64 // bytes read from clients

	mu      sync.Mutex
	links   map[*link]struct{}
	stalled chan struct{} // non-nil while stalled; closed by Resume
	closed  bool
	wg      sync.WaitGroup
}

type link struct {
	client, server *net.TCPConn
	// stalled[toServer] and stalled[toClient]: while set, the direction
	// waits for the channel to close before writing.
	stalled [2]atomic.Pointer[chan struct{}]
}

const (
	toServer = 0
	toClient = 1
)

// Start listens on a free port of 127.0.0.1 and forwards to target
// ("host:port").
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, links: map[*link]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr returns the proxy's "host:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port returns the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// SetLatency delays every chunk of bytes, in each direction, by d: a round
// trip takes at least 2d longer. Zero removes the delay.
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// Reset aborts every open connection with a TCP RST on both sides, as a
// middlebox that lost its state would. New connections are still accepted.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for l := range p.links {
		for _, c := range []*net.TCPConn{l.client, l.server} {
			c.SetLinger(0) // close sends RST, not FIN
			c.Close()
		}
		delete(p.links, l)
	}
}

// Stall stops moving bytes on every connection open now, in both
// directions, without closing anything: each side sees silence, no FIN and
// no RST. Connections opened later are not stalled. Resume ends the stall.
// Bytes a client sends meanwhile still reach the proxy (ClientBytes counts
// them) and wait there.
func (p *Proxy) Stall() { p.stall(toServer, toClient) }

// StallReplies is Stall for the server-to-client direction only: what
// clients send still reaches the server, and its answers wait in the proxy
// until Resume (or are lost with Reset).
func (p *Proxy) StallReplies() { p.stall(toClient) }

func (p *Proxy) stall(dirs ...int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled == nil {
		p.stalled = make(chan struct{})
	}
	ch := p.stalled
	for l := range p.links {
		for _, d := range dirs {
			l.stalled[d].Store(&ch)
		}
	}
}

// ClientBytes returns how many bytes clients have sent to the proxy so far,
// delivered or not.
func (p *Proxy) ClientBytes() int64 { return p.fromCli.Load() }

// Resume lets stalled connections move bytes again.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stalled != nil {
		close(p.stalled)
		p.stalled = nil
	}
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	err := p.ln.Close()
	for l := range p.links {
		l.client.Close()
		l.server.Close()
	}
	if p.stalled != nil {
		close(p.stalled)
		p.stalled = nil
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		l := &link{client: c.(*net.TCPConn), server: s.(*net.TCPConn)}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		p.links[l] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.pipe(l, toServer) })
		p.wg.Go(func() { p.pipe(l, toClient) })
	}
}

// pipe copies from src to dst until either side ends; then it closes both,
// which passes the end on. Each chunk leaves the latency after it arrived,
// and not while the link is stalled.
func (p *Proxy) pipe(l *link, dir int) {
	dst, src := l.server, l.client
	if dir == toClient {
		dst, src = l.client, l.server
	}
	defer func() {
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
		src.Close()
		dst.Close()
	}()
	type chunk struct {
		b  []byte
		at time.Time
	}
	ch := make(chan chunk, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range ch {
			if d := time.Until(c.at); d > 0 {
				time.Sleep(d)
			}
			if s := l.stalled[dir].Load(); s != nil {
				<-*s
			}
			if _, err := dst.Write(c.b); err != nil {
				src.Close() // the reader stops too
				break
			}
		}
		for range ch { // drain after a write error
		}
	}()
	for {
		b := make([]byte, 32<<10)
		n, err := src.Read(b)
		if n > 0 {
			if dir == toServer {
				p.fromCli.Add(int64(n))
			}
			ch <- chunk{b[:n], time.Now().Add(time.Duration(p.latency.Load()))}
		}
		if err != nil {
			break // EOF or error: closing both, once the chunks are out, passes it on
		}
	}
	close(ch)
	<-done
}
