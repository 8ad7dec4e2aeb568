package chaos

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// proxy forwards the TCP connections it accepts at Addr to target, and on the
// nemesis's command stalls them: a stalled connection forwards no byte in either
// direction (the sender's kernel buffers fill, as over a link that drops every
// packet) until the fault heals, when it either resumes (TCP's retransmission got
// through) or is reset (it gave up).
//
// Raft connections carry one direction each (a node dials every peer it sends to),
// so a proxy in front of a node's raft port cuts what reaches that node; a cut the
// other way is told by source: a connection is tagged with the first peer raft
// address its stream carries as a message batch's SourceAddress field (every
// dragonboat batch names its sender), and blockFrom stalls the connections of a
// tag. Until its first batch is seen a connection is untagged and passes.
type proxy struct {
	Addr   string
	target string
	tags   [][]byte
	lis    net.Listener

	mu        sync.Mutex
	cond      *sync.Cond
	all       bool
	blockFrom map[string]bool
	conns     map[*pconn]struct{}
	closed    bool
}

type pconn struct {
	client, server net.Conn
	tag            string // guarded by proxy.mu
	stalled        bool   // it waited in the current fault
	done           bool
}

// newProxy listens on a free loopback port for target; tags are the peer
// addresses a connection may be tagged with.
func newProxy(target string, tags ...string) (*proxy, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{Addr: lis.Addr().String(), target: target, lis: lis, blockFrom: map[string]bool{}, conns: map[*pconn]struct{}{}}
	p.setTags(tags...)
	p.cond = sync.NewCond(&p.mu)
	go p.accept()
	return p, nil
}

func (p *proxy) accept() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		go p.connect(c)
	}
}

// connect dials the target for an accepted connection (on its own: a frozen
// target must not hold the next connection) and pipes the two.
func (p *proxy) connect(c net.Conn) {
	s, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(context.Background(), "tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	pc := &pconn{client: c, server: s}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		s.Close()
		return
	}
	p.conns[pc] = struct{}{}
	p.mu.Unlock()
	go p.pipe(pc, c, s, true)
	go p.pipe(pc, s, c, false)
}

// pipe copies src to dst, holding each read while the connection is stalled.
func (p *proxy) pipe(pc *pconn, src, dst net.Conn, fromClient bool) {
	defer p.drop(pc)
	buf := make([]byte, 64<<10)
	var carry []byte // the end of the previous read: a tag may straddle two
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			if fromClient && pc.tag == "" && len(p.tags) > 0 {
				look := append(carry, buf[:n]...)
				for _, t := range p.tags {
					if bytes.Contains(look, t) {
						pc.tag = string(t[2:])
						break
					}
				}
				carry = append(carry[:0], look[max(0, len(look)-64):]...)
			}
			for !pc.done && (p.all || p.blockFrom[pc.tag] && pc.tag != "") {
				pc.stalled = true
				p.cond.Wait()
			}
			gone := pc.done
			p.mu.Unlock()
			if gone {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// drop closes both ends of a connection and wakes its other direction.
func (p *proxy) drop(pc *pconn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropLocked(pc)
	p.cond.Broadcast()
}

func (p *proxy) dropLocked(pc *pconn) {
	if pc.done {
		return
	}
	pc.done = true
	pc.client.Close()
	pc.server.Close()
	delete(p.conns, pc)
}

// sourceField is how a dragonboat MessageBatch carries its sender's address:
// protobuf field 3 (SourceAddress), length-delimited. Matching the whole field,
// not the bare address, keeps an entry that mentions a peer's address (the
// metadata's node records) from tagging the connection as that peer's.
func sourceField(addr string) []byte {
	return append([]byte{3<<3 | 2, byte(len(addr))}, addr...)
}

// setTags replaces the addresses connections are tagged by.
func (p *proxy) setTags(tags ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tags = p.tags[:0]
	for _, t := range tags {
		p.tags = append(p.tags, sourceField(t))
	}
}

// cutAll stalls every connection, present and new; cutFrom those tagged from.
func (p *proxy) cutAll() {
	p.mu.Lock()
	p.all = true
	p.mu.Unlock()
}

func (p *proxy) cutFrom(from string) {
	p.mu.Lock()
	p.blockFrom[from] = true
	p.mu.Unlock()
}

// heal lets traffic through again; with reset, the connections that stalled
// during the fault are closed instead of resumed.
func (p *proxy) heal(reset bool) {
	p.mu.Lock()
	p.all = false
	clear(p.blockFrom)
	var stalled []*pconn
	for pc := range p.conns {
		if pc.stalled {
			pc.stalled = false
			stalled = append(stalled, pc)
		}
	}
	if reset {
		// Closed before the waiters wake: not one stalled byte gets through.
		for _, pc := range stalled {
			p.dropLocked(pc)
		}
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

// close stops accepting and closes every connection.
func (p *proxy) close() error {
	err := p.lis.Close()
	p.mu.Lock()
	p.closed = true
	var all []*pconn
	for pc := range p.conns {
		all = append(all, pc)
	}
	p.mu.Unlock()
	for _, pc := range all {
		p.drop(pc)
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
