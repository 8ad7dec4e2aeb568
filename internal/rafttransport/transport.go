package rafttransport

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotilla-relay/flotilla/internal/crcalg"
	"github.com/lni/dragonboat/v3/config"
	"github.com/lni/dragonboat/v3/raftio"
	pb "github.com/lni/dragonboat/v3/raftpb"
)

// WireVersion is the cluster version from which nodes write this transport's own
// frames (see package buildinfo).
const WireVersion = 6

// Factory makes the transport for a NodeHost (config.ExpertConfig.TransportFactory).
type Factory struct {
	// NewWire turns this transport's own frames on; until then it writes
	// dragonboat's. It may be switched on while the node runs.
	NewWire *atomic.Bool
	// Log receives the transport's warnings (rejected frames).
	Log *slog.Logger
	// CRC, if set, is the node's checksum memo, shared with its raft log
	// (crcalg): a frame's CRC32C is combined from its payloads' checksums, taken
	// once on the node, and a received payload's checksum is remembered for the log.
	CRC *crcalg.Memo
}

// Create implements config.TransportFactory.
func (f Factory) Create(cfg config.NodeHostConfig, mh raftio.MessageHandler, ch raftio.ChunkHandler) raftio.ITransport {
	nw, log := f.NewWire, f.Log
	if nw == nil {
		nw = new(atomic.Bool)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Transport{cfg: cfg, onBatch: mh, onChunk: ch, newWire: nw, log: log, crc: f.CRC, conns: map[net.Conn]struct{}{}, stop: make(chan struct{})}
}

// Validate implements config.TransportFactory: a raft address is host:port, with a
// host and a port from 1 to 65535.
func (Factory) Validate(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return false
	}
	p, err := strconv.Atoi(port)
	return err == nil && p > 0 && p <= 65535
}

// Transport is the ITransport of one NodeHost.
type Transport struct {
	cfg     config.NodeHostConfig
	onBatch raftio.MessageHandler
	onChunk raftio.ChunkHandler
	newWire *atomic.Bool
	log     *slog.Logger
	crc     *crcalg.Memo

	ln       net.Listener
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	mu       sync.Mutex
	// conns are the accepted connections, closed by Stop.
	conns map[net.Conn]struct{}
}

var _ raftio.ITransport = (*Transport)(nil)

// Name implements raftio.ITransport.
func (t *Transport) Name() string { return "flotilla-tcp" }

// Addr is the address the transport listens on, once started.
func (t *Transport) Addr() net.Addr { return t.ln.Addr() }

// encrypted reports whether connections run TLS: dragonboat's frames then carry no
// payload CRC (TLS authenticates every byte).
func (t *Transport) encrypted() bool { return t.cfg.MutualTLS }

// Start listens on the NodeHost's listen address.
func (t *Transport) Start() error {
	tc, err := t.cfg.GetServerTLSConfig()
	if err != nil {
		return fmt.Errorf("raft transport: TLS: %w", err)
	}
	ln, err := net.Listen("tcp", t.cfg.GetListenAddress())
	if err != nil {
		return fmt.Errorf("raft transport: %w", err)
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	t.ln = ln
	t.wg.Add(1)
	go t.accept()
	return nil
}

func (t *Transport) accept() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			select {
			case <-t.stop:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			t.log.Warn("raft transport: accept failed", "err", err)
			select {
			case <-t.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		keepAlive(c)
		t.mu.Lock()
		select {
		case <-t.stop:
			t.mu.Unlock()
			c.Close()
			return
		default:
		}
		t.conns[c] = struct{}{}
		t.wg.Add(1)
		t.mu.Unlock()
		go func() {
			defer t.wg.Done()
			if err := handshake(c); err != nil {
				t.log.Warn("raft transport: TLS handshake failed", "peer", c.RemoteAddr().String(), "err", err)
			} else if err := t.serve(c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				t.log.Warn("raft transport: connection dropped", "peer", c.RemoteAddr().String(), "err", err)
			}
			c.Close()
			t.mu.Lock()
			delete(t.conns, c)
			t.mu.Unlock()
		}()
	}
}

// Stop closes the listener and every accepted connection and waits for their
// readers. Dragonboat closes the connections it got from GetConnection itself.
func (t *Transport) Stop() {
	t.stopOnce.Do(func() {
		t.mu.Lock()
		close(t.stop)
		for c := range t.conns {
			c.Close()
		}
		t.mu.Unlock()
		if t.ln != nil {
			t.ln.Close()
		}
		t.wg.Wait()
	})
}

// handshake completes an accepted TLS connection's handshake within dialTimeout
// (the listener leaves it to the first read, which waits for frames without a
// deadline): a client that never finishes it holds nothing for long.
func handshake(c net.Conn) error {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	return tc.HandshakeContext(ctx)
}

// keepAlive lets a dead peer's connection fail (TCP keepalive probes every 10 s),
// not hang.
func keepAlive(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(10 * time.Second)
	}
}

// dialTimeout bounds a connection's set-up, TLS handshake included.
const dialTimeout = 5 * time.Second

func (t *Transport) dial(ctx context.Context, target string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return nil, fmt.Errorf("raft transport: dial %s: %w", target, err)
	}
	keepAlive(c)
	tc, err := t.cfg.GetClientTLSConfig(target)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("raft transport: TLS for %s: %w", target, err)
	}
	if tc == nil {
		return c, nil
	}
	tlsc := tls.Client(c, tc)
	// A TLS connection writes a record per Write: a frame goes through a buffer
	// (payloads larger than it pass straight through) so small entries share records.
	if err := tlsc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("raft transport: TLS handshake with %s: %w", target, err)
	}
	return tlsc, nil
}

// GetConnection implements raftio.ITransport.
func (t *Transport) GetConnection(ctx context.Context, target string) (raftio.IConnection, error) {
	c, err := t.dial(ctx, target)
	if err != nil {
		return nil, err
	}
	return newConn(t, c, false), nil
}

func newConn(t *Transport, c net.Conn, snapshot bool) *conn {
	cn := &conn{t: t, c: c, snapshot: snapshot}
	if _, ok := c.(*tls.Conn); ok {
		cn.bw = bufio.NewWriterSize(c, 64<<10)
	}
	return cn
}

// GetSnapshotConnection implements raftio.ITransport.
func (t *Transport) GetSnapshotConnection(ctx context.Context, target string) (raftio.ISnapshotConnection, error) {
	c, err := t.dial(ctx, target)
	if err != nil {
		return nil, err
	}
	return newConn(t, c, true), nil
}

// conn is one outgoing connection; dragonboat uses each from one goroutine.
type conn struct {
	t        *Transport
	c        net.Conn
	snapshot bool
	enc      encoder
	// bw buffers a TLS connection's frames (see dial); nil on plain TCP, where a
	// frame's buffers go out in one writev.
	bw *bufio.Writer
}

// Close implements raftio.IConnection and raftio.ISnapshotConnection. A snapshot's
// connection first sends the poison and waits for its answer: the receiver has then
// handed every chunk to dragonboat.
func (c *conn) Close() {
	if c.snapshot {
		c.c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.c.Write(poison[:]); err == nil {
			var ack [2]byte
			io.ReadFull(c.c, ack[:])
		}
	}
	c.c.Close()
}

// SendMessageBatch implements raftio.IConnection.
func (c *conn) SendMessageBatch(b pb.MessageBatch) error {
	var bufs net.Buffers
	var err error
	if c.t.newWire.Load() {
		bufs, err = c.enc.batch(b, c.t.crc)
	} else {
		bufs, err = c.enc.legacy(raftMethod, &b, c.t.encrypted())
	}
	if err != nil {
		return err
	}
	return c.write(bufs)
}

// SendChunk implements raftio.ISnapshotConnection.
func (c *conn) SendChunk(ch pb.Chunk) error {
	var bufs net.Buffers
	var err error
	if c.t.newWire.Load() {
		bufs, err = c.enc.chunk(&ch)
	} else {
		bufs, err = c.enc.legacy(snapshotMethod, &ch, c.t.encrypted())
	}
	if err != nil {
		return err
	}
	return c.write(bufs)
}

// write writes one frame with a deadline that grows with its size (a stalled peer
// fails the send; raft sends again).
func (c *conn) write(bufs net.Buffers) error {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	defer c.enc.release()
	c.c.SetWriteDeadline(time.Now().Add(frameDeadline(n)))
	if c.bw == nil {
		if _, err := bufs.WriteTo(c.c); err != nil {
			return fmt.Errorf("raft transport: send to %s: %w", c.c.RemoteAddr(), err)
		}
		return nil
	}
	for _, b := range bufs {
		if _, err := c.bw.Write(b); err != nil {
			return fmt.Errorf("raft transport: send to %s: %w", c.c.RemoteAddr(), err)
		}
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("raft transport: send to %s: %w", c.c.RemoteAddr(), err)
	}
	return nil
}

// frameDeadline is how long n bytes of a frame may take: 10 s, and 4 s for every
// MiB (a quarter of a MiB a second at least; dragonboat's transport asks for 2 MiB
// every 5 s): a stalled peer fails the frame, a slow link does not.
func frameDeadline(n int) time.Duration { return 10*time.Second + time.Duration(n>>20)*4*time.Second }

// serve reads frames from an accepted connection until it closes or a frame fails
// its checks.
func (t *Transport) serve(c net.Conn) error {
	br := bufio.NewReaderSize(c, 64<<10)
	d := decoder{crc: t.crc}
	for {
		var magic [2]byte
		c.SetReadDeadline(time.Time{}) // between frames a connection may idle
		if _, err := io.ReadFull(br, magic[:]); err != nil {
			return err
		}
		var err error
		switch magic {
		case poison:
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			c.Write(poison[:])
			return nil
		case legacyMagic:
			err = d.legacy(br, c, t.encrypted(), t.onBatch, t.onChunk)
		case frameMagic:
			err = d.frame(br, c, t.onBatch, t.onChunk)
		default:
			err = fmt.Errorf("%w: magic %#x", errBadFrame, magic)
		}
		if err != nil {
			return err
		}
	}
}

// errBadFrame marks a frame that failed a check.
var errBadFrame = errors.New("bad raft frame")

// errChunkRejected is dragonboat refusing a snapshot chunk (its stream is then
// abandoned, as with dragonboat's own transport).
var errChunkRejected = errors.New("snapshot chunk rejected")
