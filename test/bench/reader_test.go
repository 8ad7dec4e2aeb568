package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// The bench's binlog readers: a plain MariaDB replica's dump by file and position,
// read as lean as a client can, so that the readers (this process, on the cores the
// servers use) take as little of the machine as possible from whichever server they
// measure. go-mysql's BinlogSyncer, which they were before, copies each event three
// times and allocates twice per event and hands each through a channel: with 8 readers
// the readers, not the servers, bounded both sides of a fan-out. Here go-mysql's
// client logs in and sends the session's commands, as the BinlogSyncer does; the dump's
// packets are then read from the connection through one large buffer, each event's
// header looked at in place and its bytes skipped (a Rotate's read, to follow files).

// readerBuffer is a reader's read buffer: a few large reads per binlog file.
const readerBuffer = 1 << 20

// reader is a binlog client: it dumps from file pos 4 of `from`, counting the events'
// bytes, up to the event ending at (endFile, endPos): it returns there, or with follow
// goes on and sends the arrival time of each later XID event to xids.
func reader(ctx context.Context, addr, user string, serverID uint32, from, endFile string, endPos uint32, follow bool, xids chan<- time.Time) (int64, error) {
	c, err := clientConn(addr, user)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	for _, q := range []string{
		// As go-mysql's BinlogSyncer asks (the events keep the master's checksums),
		// with a MariaDB replica's GTID capability.
		"SET @master_binlog_checksum='NONE', @source_binlog_checksum='NONE'",
		"SET @mariadb_slave_capability=4",
	} {
		if _, err := c.Execute(q); err != nil {
			return 0, fmt.Errorf("%s: %w", q, err)
		}
	}
	command := func(body []byte) error {
		c.ResetSequence()
		return c.WritePacket(append(make([]byte, 4, 4+len(body)), body...))
	}
	// COM_REGISTER_SLAVE: server id, host, user, password (empty), port, rank, master id.
	reg := binary.LittleEndian.AppendUint32([]byte{mysql.COM_REGISTER_SLAVE}, serverID)
	reg = append(reg, make([]byte, 3+2+4+4)...)
	if err := command(reg); err != nil {
		return 0, fmt.Errorf("COM_REGISTER_SLAVE: %w", err)
	}
	if _, err := c.ReadOKPacket(); err != nil {
		return 0, fmt.Errorf("COM_REGISTER_SLAVE: %w", err)
	}
	dump := binary.LittleEndian.AppendUint32([]byte{mysql.COM_BINLOG_DUMP}, 4)
	dump = binary.LittleEndian.AppendUint16(dump, 0)
	dump = binary.LittleEndian.AppendUint32(dump, serverID)
	if err := command(append(dump, from...)); err != nil {
		return 0, fmt.Errorf("COM_BINLOG_DUMP: %w", err)
	}
	// The session's answers were read whole: go-mysql's buffer holds nothing now.
	// (That holds for a plain connection, as clientConn makes: with TLS or protocol
	// compression the bytes under go-mysql's would not be the packets.)
	conn := c.Conn.Conn
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	d := dumpReader{r: bufio.NewReaderSize(conn, readerBuffer), seq: 1, file: from}
	past := false
	for {
		h, err := d.next()
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return d.n, err
		}
		if h.typ == binlog.RotateEvent {
			// A Rotate's log_pos is its place in the file it ends, not in the
			// file it names (d.file now).
			continue
		}
		if past && h.typ == binlog.XIDEvent {
			xids <- time.Now()
		}
		if !past && d.file == endFile && h.logPos >= endPos && h.logPos != 0 {
			if !follow {
				return d.n, nil
			}
			past = true
		}
	}
}

// dumpReader reads a binlog dump's packets: n counts the events' bytes, file is the
// binlog file the stream is in (it follows Rotate events).
type dumpReader struct {
	r    *bufio.Reader
	seq  uint8
	n    int64
	file string
	buf  []byte // a Rotate's or an error's bytes
}

// eventHead is what a reader needs of an event's header.
type eventHead struct {
	typ    byte
	logPos uint32
}

// next reads the next event and returns its header.
func (d *dumpReader) next() (eventHead, error) {
	size, err := d.packetHeader()
	if err != nil {
		return eventHead{}, err
	}
	if size == 0 {
		return eventHead{}, errors.New("an empty packet in the binlog dump")
	}
	// The OK byte and the event header (19 bytes), or an error or EOF packet.
	p, err := d.r.Peek(min(size, 20))
	if err != nil {
		return eventHead{}, fmt.Errorf("read a binlog packet: %w", err)
	}
	switch {
	case p[0] == mysql.ERR_HEADER:
		b, err := d.read(size)
		if err != nil {
			return eventHead{}, err
		}
		if len(b) < 9 {
			return eventHead{}, fmt.Errorf("malformed error packet %x", b)
		}
		return eventHead{}, fmt.Errorf("the server ended the dump: error %d: %s", binary.LittleEndian.Uint16(b[1:]), b[9:])
	case p[0] == mysql.EOF_HEADER && size < 9:
		return eventHead{}, io.EOF
	case p[0] != mysql.OK_HEADER || size < 20:
		return eventHead{}, fmt.Errorf("unexpected binlog packet of %d bytes: %x", size, p)
	}
	h := eventHead{typ: p[5], logPos: binary.LittleEndian.Uint32(p[14:])}
	d.n += int64(size - 1)
	if h.typ == binlog.RotateEvent {
		b, err := d.read(size)
		if err != nil {
			return h, err
		}
		if d.file, err = rotateTarget(b[1:]); err != nil {
			return h, err
		}
	} else if _, err := d.r.Discard(size); err != nil {
		return h, fmt.Errorf("read a binlog event of %d bytes: %w", size-1, err)
	}
	// An event of 16 MiB or more continues in further packets.
	for more := size; more == mysql.MaxPayloadLen; {
		if more, err = d.packetHeader(); err != nil {
			return h, err
		}
		d.n += int64(more)
		if _, err := d.r.Discard(more); err != nil {
			return h, fmt.Errorf("read the rest of a large binlog event: %w", err)
		}
	}
	return h, nil
}

// packetHeader reads a packet's header and returns its payload's size.
func (d *dumpReader) packetHeader() (int, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(d.r, hdr[:]); err != nil {
		return 0, fmt.Errorf("read a packet header: %w", err)
	}
	if hdr[3] != d.seq {
		return 0, fmt.Errorf("packet out of order: sequence %d, expected %d", hdr[3], d.seq)
	}
	d.seq++
	return int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16, nil
}

// read reads the packet's n bytes into d.buf.
func (d *dumpReader) read(n int) ([]byte, error) {
	if cap(d.buf) < n {
		d.buf = make([]byte, n)
	}
	d.buf = d.buf[:n]
	if _, err := io.ReadFull(d.r, d.buf); err != nil {
		return nil, fmt.Errorf("read a binlog packet of %d bytes: %w", n, err)
	}
	return d.buf, nil
}

// rotateTarget is the file a Rotate event names. Whether the event carries a
// checksum is told by the checksum itself: the first Rotate of a dump comes before the
// file's format description says.
func rotateTarget(ev []byte) (string, error) {
	checksummed := len(ev) >= 19+8+4 && binlog.VerifyChecksum(ev) == nil
	name, _, err := binlog.ParseRotate(ev, checksummed)
	if err != nil {
		return "", fmt.Errorf("a Rotate event: %w", err)
	}
	if name == "" {
		return "", errors.New("a Rotate event names no file")
	}
	return name, nil
}

// dumpSize is how many bytes of events the binlog files from file pos 4 of `from` to
// (endFile, endPos) hold on the server at addr (SHOW BINARY LOGS), and in how many
// files (see checkFanoutBytes).
func dumpSize(addr, user, from, endFile string, endPos uint32) (int64, int, error) {
	c, err := clientConn(addr, user)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	r, err := c.Execute("SHOW BINARY LOGS")
	if err != nil {
		return 0, 0, fmt.Errorf("SHOW BINARY LOGS on %s: %w", addr, err)
	}
	var n int64
	files := 0
	in := false
	for i := range r.RowNumber() {
		name, err := r.GetString(i, 0)
		if err != nil {
			return 0, 0, err
		}
		size, err := r.GetInt(i, 1)
		if err != nil {
			return 0, 0, err
		}
		in = in || name == from
		if !in {
			continue
		}
		files++
		if name == endFile {
			return n + int64(endPos) - 4, files, nil
		}
		n += size - 4
	}
	return 0, 0, fmt.Errorf("SHOW BINARY LOGS on %s lists no %s after %s", addr, endFile, from)
}

// dumpSlack is what a server may add to a dump's events per file: an artificial
// Rotate and, on a file/position dump, the format description sent again.
const dumpSlack = 4 << 10
