package binlog

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// MariaDB GTID event flags (flags2 byte).
const (
	// GTIDStandalone marks a group of one statement (DDL) with no XID/COMMIT after it.
	GTIDStandalone byte = 1
	// GTIDGroupCommitID says a commit id (u64) follows the flags.
	GTIDGroupCommitID byte = 2
)

// GTID is a MariaDB global transaction id: domain-server-sequence.
type GTID struct {
	Domain uint32
	Server uint32
	Seq    uint64
}

// String formats the GTID the way MariaDB prints it (0-1-100).
func (g GTID) String() string {
	// Without fmt: the syncer names every transaction it receives.
	var b [42]byte // two uint32s, a uint64 and two dashes at most
	out := strconv.AppendUint(b[:0], uint64(g.Domain), 10)
	out = append(out, '-')
	out = strconv.AppendUint(out, uint64(g.Server), 10)
	out = append(out, '-')
	out = strconv.AppendUint(out, g.Seq, 10)
	return string(out)
}

// ParseGTID parses "domain-server-seq".
func ParseGTID(s string) (GTID, error) {
	parts := strings.Split(strings.TrimSpace(s), "-")
	if len(parts) != 3 {
		return GTID{}, fmt.Errorf("binlog: GTID %q is not domain-server-sequence", s)
	}
	d, err1 := strconv.ParseUint(parts[0], 10, 32)
	sv, err2 := strconv.ParseUint(parts[1], 10, 32)
	n, err3 := strconv.ParseUint(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return GTID{}, fmt.Errorf("binlog: GTID %q has a non-numeric part", s)
	}
	return GTID{Domain: uint32(d), Server: uint32(sv), Seq: n}, nil
}

// GTIDEvent is the decoded head of a MariaDB GTID event.
type GTIDEvent struct {
	GTID  GTID
	Flags byte
}

// Standalone reports whether the group is a single statement without BEGIN/COMMIT.
func (e GTIDEvent) Standalone() bool { return e.Flags&GTIDStandalone != 0 }

// ParseGTIDEvent decodes a MariaDB GTID event (type 162).
func ParseGTIDEvent(ev []byte) (GTIDEvent, error) {
	if len(ev) < HeaderLen+13 {
		return GTIDEvent{}, fmt.Errorf("%w: GTID event of %d bytes", ErrShort, len(ev))
	}
	if ev[4] != MariaGTIDEvent {
		return GTIDEvent{}, fmt.Errorf("binlog: event type %d is not a MariaDB GTID event", ev[4])
	}
	b := ev[HeaderLen:]
	return GTIDEvent{
		GTID: GTID{
			Seq:    binary.LittleEndian.Uint64(b),
			Domain: binary.LittleEndian.Uint32(b[8:]),
			Server: binary.LittleEndian.Uint32(ev[5:]),
		},
		Flags: b[12],
	}, nil
}

// Position is a GTID position as MariaDB replicas hold it: the last GTID applied in
// each replication domain. It is the form of @@gtid_slave_pos, @slave_connect_state
// and of the Gtid_list event that heads every served file.
type Position map[uint32]GTID

// ParsePosition parses a comma-separated list of GTIDs; the empty string is the empty
// position. Two GTIDs of the same domain are an error, as in MariaDB.
func ParsePosition(s string) (Position, error) {
	p := Position{}
	s = strings.TrimSpace(s)
	if s == "" {
		return p, nil
	}
	for _, part := range strings.Split(s, ",") {
		g, err := ParseGTID(part)
		if err != nil {
			return nil, err
		}
		if _, dup := p[g.Domain]; dup {
			return nil, fmt.Errorf("binlog: GTID position %q names domain %d twice", s, g.Domain)
		}
		p[g.Domain] = g
	}
	return p, nil
}

// Domains returns the domain ids in increasing order, so output is deterministic.
func (p Position) Domains() []uint32 {
	ds := make([]uint32, 0, len(p))
	for d := range p {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds
}

// String formats the position as MariaDB does (sorted by domain).
func (p Position) String() string {
	var sb strings.Builder
	for i, d := range p.Domains() {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(p[d].String())
	}
	return sb.String()
}

// Clone returns an independent copy.
func (p Position) Clone() Position {
	c := make(Position, len(p))
	for d, g := range p {
		c[d] = g
	}
	return c
}

// Contains reports whether the transaction g is at or before this position in its
// domain (MariaDB compares sequence numbers within a domain).
func (p Position) Contains(g GTID) bool {
	cur, ok := p[g.Domain]
	return ok && cur.Seq >= g.Seq
}

// Equal reports whether both positions name the same GTIDs.
func (p Position) Equal(o Position) bool {
	if len(p) != len(o) {
		return false
	}
	for d, g := range p {
		if o[d] != g {
			return false
		}
	}
	return true
}

// AppendBinary encodes the position compactly (count, then domain/server/seq).
func (p Position) AppendBinary(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(p)))
	for _, d := range p.Domains() {
		g := p[d]
		dst = binary.AppendUvarint(dst, uint64(g.Domain))
		dst = binary.AppendUvarint(dst, uint64(g.Server))
		dst = binary.AppendUvarint(dst, g.Seq)
	}
	return dst
}

// DecodePosition reads a position written by AppendBinary and returns the rest of b.
func DecodePosition(b []byte) (Position, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, nil, fmt.Errorf("binlog: bad GTID position count")
	}
	b = b[k:]
	p := make(Position, n)
	for i := uint64(0); i < n; i++ {
		var v [3]uint64
		for j := range v {
			x, k := binary.Uvarint(b)
			if k <= 0 {
				return nil, nil, fmt.Errorf("binlog: truncated GTID position")
			}
			v[j], b = x, b[k:]
		}
		if v[0] > 0xffffffff || v[1] > 0xffffffff {
			return nil, nil, fmt.Errorf("binlog: GTID domain or server id out of range")
		}
		g := GTID{Domain: uint32(v[0]), Server: uint32(v[1]), Seq: v[2]}
		if _, dup := p[g.Domain]; dup {
			return nil, nil, fmt.Errorf("binlog: GTID position repeats domain %d", g.Domain)
		}
		p[g.Domain] = g
	}
	return p, b, nil
}

// NewGTIDList builds a MariaDB Gtid_list event (type 163) for the position p. Served
// files start with one so a replica (and mariadb-binlog) knows the state at file start.
func NewGTIDList(serverID, timestamp, logPos uint32, p Position, checksummed bool) []byte {
	body := make([]byte, 4, 4+16*len(p))
	binary.LittleEndian.PutUint32(body, uint32(len(p)))
	for _, d := range p.Domains() {
		g := p[d]
		body = binary.LittleEndian.AppendUint32(body, g.Domain)
		body = binary.LittleEndian.AppendUint32(body, g.Server)
		body = binary.LittleEndian.AppendUint64(body, g.Seq)
	}
	return build(MariaGTIDListEvent, serverID, timestamp, logPos, 0, body, checksummed)
}

// ParseGTIDList decodes a Gtid_list event. When it names several servers of one domain,
// the highest sequence number wins, which is the domain's position.
func ParseGTIDList(ev []byte, checksummed bool) (Position, error) {
	b, err := body(ev, checksummed)
	if err != nil {
		return nil, err
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: Gtid_list without count", ErrShort)
	}
	n := binary.LittleEndian.Uint32(b) & 0x0fffffff // top 4 bits are flags
	b = b[4:]
	if uint64(len(b)) < uint64(n)*16 {
		return nil, fmt.Errorf("%w: Gtid_list says %d GTIDs in %d bytes", ErrShort, n, len(b))
	}
	p := make(Position, n)
	for i := uint32(0); i < n; i++ {
		g := GTID{
			Domain: binary.LittleEndian.Uint32(b),
			Server: binary.LittleEndian.Uint32(b[4:]),
			Seq:    binary.LittleEndian.Uint64(b[8:]),
		}
		b = b[16:]
		if cur, ok := p[g.Domain]; !ok || g.Seq > cur.Seq {
			p[g.Domain] = g
		}
	}
	return p, nil
}
