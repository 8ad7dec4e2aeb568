package shard

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// eventSource is where a syncer reads the master's events: Flotilla's own dump
// stream (dumpStream), its only implementation.
type eventSource interface {
	// next returns the next event (raw bytes) or the error that ended the stream.
	// An event's bytes are its own until it is given back with release: the
	// pipeline keeps parts of a large event by reference until they are proposed,
	// and may write a proposal's prefix over a proposed part's tail (see
	// addLargeEvent).
	next(ctx context.Context) ([]byte, error)
	// buffered appends to dst the events already read, without waiting, until none
	// is, the stream has ended (next then returns its error) or dst is full (it never
	// grows dst: a syncer reuses it for every batch).
	buffered(dst [][]byte) [][]byte
	// release gives back an event's bytes, which nothing reads after: the source
	// may read a later event into them.
	release(ev []byte)
	close()
}

// dumpStream is the binlog dump a syncer runs, Flotilla's own rather than go-mysql's
// BinlogSyncer: as a semi-sync replica, go-mysql sends a semi-sync ACK as soon as it
// has read an event, but Flotilla may acknowledge a transaction only once its raft
// quorum has committed it (see pipeline.complete); and as a plain one, go-mysql's
// syncer fixes a 64 KiB read buffer per connection, a sixth of an idle group's
// memory. go-mysql's client still does the handshake, TLS and the commands before
// the dump; the dump's packets are read here (see below).
//
// Unlike go-mysql's syncer, close does not KILL the master's dump thread from a
// second connection: the master ends it when its next write fails, or when the next
// dump registers with the same server id (and, on MySQL, the same replica UUID).
//
// Invariants: after an event that asked for an ACK the master resets its packet
// sequence, so the reader expects 1 next; an ACK is written straight to the
// connection with sequence 0, outside the reader's sequence, and only by the
// syncer's goroutine (TLS connections allow one writer beside one reader). close
// ends the reader even when it waits to hand an event on.
//
// Once the dump command is sent the reader reads the packets itself, from the
// connection under go-mysql's (see readPacket): go-mysql's packet layer copied each
// event three times and allocated twice per event, a fifth of an ingest's CPU. Its
// buffered reader is empty then: a master sends nothing but answers, and every
// answer was read whole.
type dumpStream struct {
	c      *client.Conn
	events chan []byte
	errc   chan error
	done   chan struct{}
	once   sync.Once
	// semi is whether the master agreed to semi-sync (it has the feature on).
	semi bool
	// conn is the connection under go-mysql's packet layer; r reads the dump's
	// packets from it, nil while the master is idle (see readers); seq is the
	// sequence the next packet must carry. Only the reader uses them.
	conn    net.Conn
	r       *bufio.Reader
	readers *sync.Pool
	seq     uint8
	// free holds small events' buffers the pipeline gave back (release), for the
	// reader's next packets; a heartbeat (the master is idle) empties it.
	free chan []byte
	// large lends the buffers of events of pooledMin to pooledMax bytes; they go
	// back to it once released or, split into parts, once proposed (see
	// addLargeEvent). Nil: they are allocated.
	large *bufPool
}

// recycledEvent is the largest event buffer a stream reads into again: most events
// are rows events of at most 8 KiB (binlog_row_event_max_size), and a larger one is
// rare enough to be allocated (from pooledMin on, the node's piece pool lends them).
const recycledEvent = 16 << 10

// dumpConfig is what a dumpStream needs to start a dump.
type dumpConfig struct {
	addr, user, password string
	tls                  *tls.Config
	serverID             uint32
	mysqlFlavor          bool
	// gset is where to continue: a MariaDB GTID position or a MySQL GTID set.
	gset mysql.GTIDSet
	// heartbeat is the period of the master's heartbeats while it has nothing to
	// send (semiSyncHeartbeat at most on a semi-sync stream).
	heartbeat time.Duration
	// watch follows the connection's reads (see silence.go).
	watch *linkWatch
	// semiSync: announce a semi-sync replica if the master has semi-sync on.
	semiSync bool
	// uuid is the replica UUID announced to a MySQL master (which, at a new dump,
	// ends the older dumps of the same UUID, or of the same server id without one).
	uuid string
	// large lends the buffers of events of pooledMin to pooledMax bytes (optional).
	large *bufPool
	// readers lends the streams their buffered readers, shared by a node's groups:
	// a stream whose master is idle holds none (optional).
	readers *sync.Pool
}

// semiSyncHeartbeat is the longest heartbeat period of a semi-sync stream.
const semiSyncHeartbeat = time.Second

// streamReadBuffer is the dump connection's read buffer while its master sends
// (go-mysql's client uses 64 KiB, a sixth of an idle group's memory): small events
// come many to a read; a larger one is read straight into its own buffer.
const streamReadBuffer = 16 << 10

// openDumpStream connects, announces a semi-sync replica (when cfg allows it and the
// master has semi-sync on) and starts the dump.
func openDumpStream(ctx context.Context, cfg dumpConfig) (*dumpStream, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// No read timeout: the watch bounds reads until the dump runs, then the
	// syncer's probes judge a silent stream (see silence.go).
	c, err := connectWatched(dctx, cfg.addr, cfg.user, cfg.password, cfg.tls, 10*time.Second, cfg.watch,
		func(c *client.Conn) error { c.BufferSize = streamReadBuffer; return nil })
	if err != nil {
		return nil, err
	}
	st := &dumpStream{c: c, events: make(chan []byte, eventReadAhead), errc: make(chan error, 1), done: make(chan struct{}),
		free: make(chan []byte, eventReadAhead+2), large: cfg.large}
	if err := st.start(cfg); err != nil {
		c.Close()
		return nil, err
	}
	st.conn, st.seq, st.readers = c.Conn.Conn, c.Sequence, cfg.readers
	// go-mysql's packet layer is not used again: its two 16 KiB buffers would stay
	// with every group's stream. Nothing calls c's methods that need it after this
	// (HandleErrorPacket parses its argument only).
	c.Conn = nil
	if st.readers == nil {
		st.readers = &sync.Pool{}
	}
	go st.read()
	return st, nil
}

func (st *dumpStream) start(cfg dumpConfig) error {
	c := st.c
	exec := func(q string) error {
		if _, err := c.Execute(q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
		return nil
	}
	// Checksums as go-mysql's syncer asks for them: the events keep the master's.
	if err := exec("SET @master_binlog_checksum='NONE', @source_binlog_checksum='NONE'"); err != nil {
		return err
	}
	if !cfg.mysqlFlavor {
		if err := exec("SET @mariadb_slave_capability=4"); err != nil {
			return err
		}
	} else if cfg.uuid != "" {
		if err := exec(fmt.Sprintf("SET @slave_uuid='%s', @replica_uuid='%s'", cfg.uuid, cfg.uuid)); err != nil {
			return err
		}
	}
	// Semi-sync only if the master has it on, as MariaDB's own replica decides.
	st.semi = cfg.semiSync && semiSyncOffered(c)
	if hb := cfg.heartbeat; hb > 0 {
		if st.semi {
			// A master waiting for an ACK the group owes from before a reconnection
			// hears it with the next heartbeat (see pipeline.handle).
			hb = min(hb, semiSyncHeartbeat)
		}
		ns := hb.Nanoseconds()
		if err := exec(fmt.Sprintf("SET @master_heartbeat_period=%d, @source_heartbeat_period=%d", ns, ns)); err != nil {
			return err
		}
	}
	if st.semi {
		if err := exec("SET @rpl_semi_sync_slave=1, @rpl_semi_sync_replica=1"); err != nil {
			return err
		}
	}
	// COM_REGISTER_SLAVE: server id, host, user, password, port, rank, master id.
	reg := []byte{mysql.COM_REGISTER_SLAVE}
	reg = binary.LittleEndian.AppendUint32(reg, cfg.serverID)
	reg = append(reg, 8)
	reg = append(reg, "flotilla"...)
	reg = append(reg, 0, 0)
	reg = binary.LittleEndian.AppendUint16(reg, 0)
	reg = binary.LittleEndian.AppendUint32(reg, 0)
	reg = binary.LittleEndian.AppendUint32(reg, 0)
	if err := st.command(reg); err != nil {
		return fmt.Errorf("COM_REGISTER_SLAVE: %w", err)
	}
	if _, err := c.ReadOKPacket(); err != nil {
		return fmt.Errorf("COM_REGISTER_SLAVE: %w", err)
	}
	var dump []byte
	if cfg.mysqlFlavor {
		set := cfg.gset.Encode()
		dump = []byte{mysql.COM_BINLOG_DUMP_GTID, 0, 0}
		dump = binary.LittleEndian.AppendUint32(dump, cfg.serverID)
		dump = binary.LittleEndian.AppendUint32(dump, 0)
		dump = binary.LittleEndian.AppendUint64(dump, 4)
		dump = binary.LittleEndian.AppendUint32(dump, uint32(len(set)))
		dump = append(dump, set...)
	} else {
		if err := exec(fmt.Sprintf("SET @slave_connect_state='%s'", cfg.gset.String())); err != nil {
			return err
		}
		if err := exec("SET @slave_gtid_strict_mode=1"); err != nil {
			return err
		}
		dump = []byte{mysql.COM_BINLOG_DUMP}
		dump = binary.LittleEndian.AppendUint32(dump, 4)
		dump = binary.LittleEndian.AppendUint16(dump, 0)
		dump = binary.LittleEndian.AppendUint32(dump, cfg.serverID)
	}
	return st.command(dump)
}

// command writes one command packet at sequence 0.
func (st *dumpStream) command(body []byte) error {
	st.c.ResetSequence()
	return st.c.WritePacket(append(make([]byte, 4, 4+len(body)), body...))
}

// read runs until the stream ends, handing events on and keeping the sequence right.
func (st *dumpStream) read() {
	fail := func(err error) {
		st.errc <- err
		close(st.events)
	}
	for {
		var buf []byte
		select {
		case buf = <-st.free:
		default:
		}
		p, err := st.readPacket(buf)
		if err != nil {
			fail(err)
			return
		}
		switch {
		case len(p) == 0:
			fail(errors.New("empty packet in the binlog stream"))
			return
		case p[0] == mysql.ERR_HEADER && len(p) < 9:
			// go-mysql would index past it: code (2), '#' and SQL state (6).
			fail(fmt.Errorf("master sent a malformed error packet of %d bytes (%x)", len(p), p))
			return
		case p[0] == mysql.ERR_HEADER:
			fail(st.c.HandleErrorPacket(bytes.Clone(p))) // its message refers to the bytes
			return
		case p[0] == mysql.EOF_HEADER && len(p) < 9:
			fail(io.EOF)
			return
		case p[0] != mysql.OK_HEADER:
			fail(fmt.Errorf("unexpected packet 0x%02x in the binlog stream", p[0]))
			return
		}
		ev := p[1:]
		if st.semi {
			if len(ev) < 2 || ev[0] != replication.SemiSyncIndicator {
				fail(errors.New("semi-sync master sent an event without its semi-sync header"))
				return
			}
			if ev[1]&0x01 != 0 {
				// The master reset its sequence after this event (it awaits an ACK).
				st.seq = 1
			}
			ev = ev[2:]
		}
		if len(ev) > 4 && ev[4] == binlog.HeartbeatEvent {
			st.idle() // the master is idle: keep no buffers while it stays so
		} else if st.r == nil {
			// Events again, which come in bursts: read them through a buffer. (An
			// idle stream reads its heartbeats unbuffered, so nothing is buffered.)
			st.r, _ = st.readers.Get().(*bufio.Reader)
			if st.r == nil {
				st.r = bufio.NewReaderSize(st.conn, streamReadBuffer)
			}
			st.r.Reset(st.conn)
		}
		select {
		case st.events <- ev:
		case <-st.done:
			fail(errors.New("binlog stream closed"))
			return
		}
	}
}

// readPacket reads the next packet's payload into buf (which it grows as needed),
// joining a payload sent in several packets.
func (st *dumpStream) readPacket(buf []byte) ([]byte, error) {
	buf = buf[:0]
	for {
		var hdr [4]byte
		var src io.Reader = st.r
		if st.r == nil {
			src = st.conn // idle until now: see read
		}
		if _, err := io.ReadFull(src, hdr[:]); err != nil {
			return nil, fmt.Errorf("read packet header: %w", err)
		}
		n := int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16
		if hdr[3] != st.seq {
			return nil, fmt.Errorf("packet out of order: sequence %d, expected %d", hdr[3], st.seq)
		}
		st.seq++
		if need := len(buf) + n; need > cap(buf) && need >= pooledMin && need <= pooledMax && st.large != nil {
			// A large event (a piece or more): from the pool it goes back to once
			// proposed. Larger ones (several packets) grow as slices do.
			old := buf
			buf = append(st.large.get(need), buf...)
			st.large.put(old)
		}
		buf = slices.Grow(buf, n)
		if _, err := io.ReadFull(src, buf[len(buf):len(buf)+n]); err != nil {
			return nil, fmt.Errorf("read packet of %d bytes: %w", n, err)
		}
		buf = buf[:len(buf)+n]
		if n < mysql.MaxPayloadLen {
			return buf, nil
		}
	}
}

// release implements eventSource: a small event's buffer serves a later packet, a
// large one's goes back to the pool it came from.
func (st *dumpStream) release(ev []byte) {
	switch {
	case cap(ev) >= pooledMin:
		if st.large != nil {
			st.large.put(ev)
		}
	case cap(ev) <= recycledEvent:
		select {
		case st.free <- ev[:0]:
		default:
		}
	}
}

// idle gives up the buffers a stream keeps for its next packets: its reader (if it
// holds nothing unread) and the recycled event buffers.
func (st *dumpStream) idle() {
	if st.r != nil && st.r.Buffered() == 0 {
		st.r.Reset(nil)
		st.readers.Put(st.r)
		st.r = nil
	}
	for {
		select {
		case <-st.free:
		default:
			return
		}
	}
}

func (st *dumpStream) next(ctx context.Context) ([]byte, error) {
	select {
	case ev, ok := <-st.events:
		if !ok {
			return nil, <-st.errc
		}
		return ev, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-st.done:
		return nil, errors.New("binlog stream closed")
	}
}

func (st *dumpStream) buffered(dst [][]byte) [][]byte {
	for len(dst) < cap(dst) {
		select {
		case ev, ok := <-st.events:
			if !ok {
				st.errc <- <-st.errc // keep the error for next
				return dst
			}
			dst = append(dst, ev)
		default:
			return dst
		}
	}
	return dst
}

// ack tells the master that everything up to pos of its binlog file is durable:
// 0xEF, the position (u64) and the file name, at sequence 0, written under wmu
// directly to the connection, beside the reader.
func (st *dumpStream) ack(file string, pos uint64) error {
	if !st.semi {
		return nil
	}
	body := binary.LittleEndian.AppendUint64([]byte{replication.SemiSyncIndicator}, pos)
	body = append(body, file...)
	pkt := []byte{byte(len(body)), byte(len(body) >> 8), byte(len(body) >> 16), 0}
	pkt = append(pkt, body...)
	raw := st.conn
	_ = raw.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := raw.Write(pkt)
	return err
}

func (st *dumpStream) close() {
	st.once.Do(func() {
		close(st.done)
		// The network connection itself: go-mysql's packet layer is gone (see
		// openDumpStream), and its Close would reset the sequence the reader uses.
		_ = st.conn.Close()
	})
}
