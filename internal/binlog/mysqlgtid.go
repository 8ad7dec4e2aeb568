package binlog

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// MySQL-flavor GTIDs, the groundwork of the MySQL flavor: a transaction is
// source_id:gno (server_uuid and a sequence number starting at 1), or, from MySQL 8.3,
// source_id:tag:gno. A set holds, per source (and tag), sorted disjoint intervals.
//
// Invariants: intervals of a source are sorted, non-empty (Start < End, End exclusive
// as MySQL encodes them) and neither overlap nor touch (adjacent ones are merged); a
// source with no interval is not in the set; tags are lower case (MySQL folds them).

// MySQL event types of the GTID family.
const (
	MySQLGTIDEvent          byte = 33
	MySQLAnonymousGTIDEvent byte = 34
	MySQLPreviousGTIDsEvent byte = 35
	MySQLGTIDTaggedEvent    byte = 42
)

// SID is a MySQL source id: the server_uuid of the server that ran the transaction.
type SID [16]byte

// ParseSID parses a UUID in its 8-4-4-4-12 text form.
func ParseSID(s string) (SID, error) {
	var id SID
	h := strings.ReplaceAll(strings.TrimSpace(s), "-", "")
	if len(h) != 32 || strings.Count(s, "-") != 4 {
		return id, fmt.Errorf("binlog: %q is not a UUID (8-4-4-4-12 hex digits)", s)
	}
	if _, err := hex.Decode(id[:], []byte(h)); err != nil {
		return id, fmt.Errorf("binlog: %q is not a UUID: %w", s, err)
	}
	return id, nil
}

func (id SID) String() string {
	h := hex.EncodeToString(id[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Source is one source of transactions in a MySQL GTID set: a SID and, for tagged
// GTIDs, a tag.
type Source struct {
	SID SID
	Tag string
}

func (s Source) String() string {
	if s.Tag == "" {
		return s.SID.String()
	}
	return s.SID.String() + ":" + s.Tag
}

// MySQLGTID is one MySQL transaction id.
type MySQLGTID struct {
	Source
	GNO int64
}

func (g MySQLGTID) String() string { return g.Source.String() + ":" + strconv.FormatInt(g.GNO, 10) }

// Interval is the transactions Start to End-1 of a source.
type Interval struct{ Start, End int64 }

// MySQLSet is a MySQL GTID set (gtid_executed, a replica's auto-position set).
type MySQLSet map[Source][]Interval

// ParseMySQLSet parses the text form: "uuid:1-5:7,uuid:tag:1-3", whitespace and
// newlines allowed between elements, as @@gtid_executed prints it.
func ParseMySQLSet(s string) (MySQLSet, error) {
	set := MySQLSet{}
	for _, elem := range strings.Split(s, ",") {
		elem = strings.TrimSpace(elem)
		if elem == "" {
			continue
		}
		parts := strings.Split(elem, ":")
		sid, err := ParseSID(parts[0])
		if err != nil {
			return nil, err
		}
		src := Source{SID: sid}
		for _, p := range parts[1:] {
			p = strings.TrimSpace(p)
			if p == "" || p[0] < '0' || p[0] > '9' {
				tag, err := parseTag(p)
				if err != nil {
					return nil, fmt.Errorf("binlog: GTID set element %q: %w", elem, err)
				}
				src.Tag = tag
				continue
			}
			lo, hi, ok := strings.Cut(p, "-")
			start, err1 := strconv.ParseInt(lo, 10, 64)
			end := start
			var err2 error
			if ok {
				end, err2 = strconv.ParseInt(hi, 10, 64)
			}
			if err1 != nil || err2 != nil || start < 1 || end < start || end == 1<<63-1 {
				return nil, fmt.Errorf("binlog: GTID set element %q: bad interval %q (want N or N-M with 1 <= N <= M)", elem, p)
			}
			set[src] = append(set[src], Interval{start, end + 1})
		}
	}
	set.normalize()
	return set, nil
}

// parseTag checks a GTID tag: a letter or underscore, then up to 31 letters, digits
// or underscores; MySQL compares tags case-insensitively.
func parseTag(t string) (string, error) {
	if len(t) == 0 || len(t) > 32 {
		return "", fmt.Errorf("tag %q must have 1 to 32 characters", t)
	}
	for i, c := range t {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
		if !letter && (i == 0 || c < '0' || c > '9') {
			return "", fmt.Errorf("tag %q: only letters, digits and _ (not first: a digit)", t)
		}
	}
	return strings.ToLower(t), nil
}

// Add puts one transaction in the set.
func (s MySQLSet) Add(g MySQLGTID) { s.addInterval(g.Source, Interval{g.GNO, g.GNO + 1}) }

func (s MySQLSet) addInterval(src Source, iv Interval) {
	s[src] = mergeIntervals(append(s[src], iv))
}

// normalize restores the invariants after intervals were appended in any order: one
// sort and merge per source, so building a set of n intervals costs n log n.
func (s MySQLSet) normalize() {
	for src, ivs := range s {
		if len(ivs) == 0 {
			delete(s, src)
			continue
		}
		s[src] = mergeIntervals(ivs)
	}
}

// mergeIntervals sorts ivs and merges the ones that overlap or touch, in place.
func mergeIntervals(ivs []Interval) []Interval {
	sort.Slice(ivs, func(i, j int) bool { return ivs[i].Start < ivs[j].Start })
	out := ivs[:1]
	for _, v := range ivs[1:] {
		last := &out[len(out)-1]
		if v.Start <= last.End {
			last.End = max(last.End, v.End)
			continue
		}
		out = append(out, v)
	}
	return out
}

// Contains reports whether the set holds g.
func (s MySQLSet) Contains(g MySQLGTID) bool {
	ivs := s[g.Source]
	i := sort.Search(len(ivs), func(i int) bool { return ivs[i].End > g.GNO })
	return i < len(ivs) && ivs[i].Start <= g.GNO
}

// sources returns the set's sources in MySQL's printing order: by UUID text, untagged
// first, then by tag.
func (s MySQLSet) sources() []Source {
	out := make([]Source, 0, len(s))
	for src := range s {
		out = append(out, src)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].SID != out[j].SID {
			return out[i].SID.String() < out[j].SID.String()
		}
		return out[i].Tag < out[j].Tag
	})
	return out
}

// String prints the set as MySQL does: one element per UUID, its untagged intervals
// then each tag's, "uuid:1-5:7:tag:1-3", elements joined by ",".
func (s MySQLSet) String() string {
	var b strings.Builder
	var prev SID
	for i, src := range s.sources() {
		if i == 0 || src.SID != prev {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(src.SID.String())
			prev = src.SID
		}
		if src.Tag != "" {
			b.WriteString(":" + src.Tag)
		}
		for _, iv := range s[src] {
			b.WriteString(":" + strconv.FormatInt(iv.Start, 10))
			if iv.End-1 > iv.Start {
				b.WriteString("-" + strconv.FormatInt(iv.End-1, 10))
			}
		}
	}
	return b.String()
}

// AppendEncoded appends the binary form MySQL uses in COM_BINLOG_DUMP_GTID and in
// PREVIOUS_GTIDS events: u64 number of sources, then per source its SID's 16 bytes,
// u64 number of intervals and each interval as u64 start and u64 end (exclusive). A
// set with tagged sources takes MySQL 8.3's tagged form (as MySQL writes it only
// then): the count is n<<8 with bytes 0 and 7 set to 1 (the format marker), and each
// SID is followed by its tag's length (a varint) and bytes. The error is always nil.
func (s MySQLSet) AppendEncoded(dst []byte) ([]byte, error) {
	srcs := s.sources()
	tagged := false
	for _, src := range srcs {
		tagged = tagged || src.Tag != ""
	}
	if tagged {
		n := binary.LittleEndian.AppendUint64(nil, uint64(len(srcs))<<8)
		n[0], n[7] = 1, 1
		dst = append(dst, n...)
	} else {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(len(srcs)))
	}
	for _, src := range srcs {
		dst = append(dst, src.SID[:]...)
		if tagged {
			dst = appendVarint(dst, uint64(len(src.Tag)))
			dst = append(dst, src.Tag...)
		}
		dst = binary.LittleEndian.AppendUint64(dst, uint64(len(s[src])))
		for _, iv := range s[src] {
			dst = binary.LittleEndian.AppendUint64(dst, uint64(iv.Start))
			dst = binary.LittleEndian.AppendUint64(dst, uint64(iv.End))
		}
	}
	return dst, nil
}

// DecodeMySQLSet reads the binary form AppendEncoded writes (untagged), and returns
// the bytes after it. Counts are checked against the bytes present before anything is
// allocated for them.
func DecodeMySQLSet(b []byte) (MySQLSet, []byte, error) {
	if len(b) < 8 {
		return nil, nil, fmt.Errorf("%w: GTID set of %d bytes", ErrShort, len(b))
	}
	n := binary.LittleEndian.Uint64(b)
	tagged := false
	switch b[7] {
	case 0:
	case 1:
		if b[0] != 1 {
			return nil, nil, fmt.Errorf("binlog: GTID set with a damaged tagged-format marker %x", b[:8])
		}
		tagged = true
		n = n >> 8 & (1<<48 - 1)
	default:
		return nil, nil, fmt.Errorf("binlog: GTID set of unknown format %d (damaged?)", b[7])
	}
	b = b[8:]
	if n > uint64(len(b))/24 {
		return nil, nil, fmt.Errorf("%w: GTID set claims %d sources in %d bytes", ErrShort, n, len(b))
	}
	set := MySQLSet{}
	for ; n > 0; n-- {
		if len(b) < 24 {
			return nil, nil, fmt.Errorf("%w: GTID set source", ErrShort)
		}
		var src Source
		copy(src.SID[:], b)
		b = b[16:]
		if tagged {
			tl, k, err := readVarint(b)
			if err != nil {
				return nil, nil, fmt.Errorf("binlog: GTID set tag of %s: %w", src.SID, err)
			}
			if tl > uint64(len(b)-k) {
				return nil, nil, fmt.Errorf("%w: GTID set tag of %d bytes", ErrShort, tl)
			}
			if tl > 0 {
				if src.Tag, err = parseTag(string(b[k : k+int(tl)])); err != nil || src.Tag != string(b[k:k+int(tl)]) {
					return nil, nil, fmt.Errorf("binlog: GTID set tag %q of %s is not a valid tag", b[k:k+int(tl)], src.SID)
				}
			}
			b = b[k+int(tl):]
		}
		if len(b) < 8 {
			return nil, nil, fmt.Errorf("%w: GTID set source", ErrShort)
		}
		k := binary.LittleEndian.Uint64(b)
		b = b[8:]
		if k > uint64(len(b))/16 {
			return nil, nil, fmt.Errorf("%w: GTID set claims %d intervals for %s in %d bytes", ErrShort, k, src, len(b))
		}
		for ; k > 0; k-- {
			start, end := int64(binary.LittleEndian.Uint64(b)), int64(binary.LittleEndian.Uint64(b[8:]))
			b = b[16:]
			if start < 1 || end <= start {
				return nil, nil, fmt.Errorf("binlog: GTID set interval %d-%d of %s is empty or negative", start, end, src)
			}
			set[src] = append(set[src], Interval{start, end})
		}
	}
	set.normalize()
	return set, b, nil
}

// ParseMySQLGTIDEvent reads the GTID of a GTID event (type 33: flags u8, SID, GNO
// u64 follow the header) or of a GTID_TAGGED event (type 42).
func ParseMySQLGTIDEvent(ev []byte) (MySQLGTID, error) {
	if len(ev) > 4 && ev[4] == MySQLGTIDTaggedEvent {
		return ParseMySQLGTIDTaggedEvent(ev)
	}
	if len(ev) < HeaderLen+1+16+8 || ev[4] != MySQLGTIDEvent {
		return MySQLGTID{}, fmt.Errorf("%w: not a MySQL GTID event of %d bytes", ErrShort, len(ev))
	}
	var g MySQLGTID
	copy(g.SID[:], ev[HeaderLen+1:])
	g.GNO = int64(binary.LittleEndian.Uint64(ev[HeaderLen+17:]))
	if g.GNO < 1 || g.GNO == math.MaxInt64 { // MySQL's gnos end at 2^63-2
		return MySQLGTID{}, fmt.Errorf("binlog: MySQL GTID event with gno %d", g.GNO)
	}
	return g, nil
}

// Indexed is the GTID under which a group files a MySQL transaction in the places a
// MariaDB GTID takes (its index, its per-domain state): 64 bits of the SHA-256 of the
// source's text as domain and server, the gno as sequence. Nothing serves MySQL
// replicas from these entries (they start from files' PREVIOUS_GTIDS, see
// statemachine.Group.LocateMySQL), so two sources hashing alike would cost nothing
// but a wrong index entry; it keeps the raft commands and the index MariaDB-shaped.
func (g MySQLGTID) Indexed() GTID {
	h := sha256.Sum256([]byte(g.Source.String()))
	return GTID{Domain: binary.BigEndian.Uint32(h[:]), Server: binary.BigEndian.Uint32(h[4:]), Seq: uint64(g.GNO)}
}

// Clone returns a deep copy of the set.
func (s MySQLSet) Clone() MySQLSet {
	out := make(MySQLSet, len(s))
	for src, ivs := range s {
		out[src] = append([]Interval(nil), ivs...)
	}
	return out
}

// Union adds every transaction of o to s.
func (s MySQLSet) Union(o MySQLSet) {
	for src, ivs := range o {
		s[src] = mergeIntervals(append(s[src], ivs...))
	}
}

// Subtract returns the transactions of s that o does not hold.
func (s MySQLSet) Subtract(o MySQLSet) MySQLSet {
	out := MySQLSet{}
	for src, ivs := range s {
		for _, iv := range ivs {
			start := iv.Start
			for _, cut := range o[src] {
				if cut.End <= start || cut.Start >= iv.End {
					continue
				}
				if cut.Start > start {
					out[src] = append(out[src], Interval{start, cut.Start})
				}
				start = max(start, cut.End)
			}
			if start < iv.End {
				out[src] = append(out[src], Interval{start, iv.End})
			}
		}
	}
	out.normalize()
	return out
}

// Only returns the part of s whose sources o has.
func (s MySQLSet) Only(o MySQLSet) MySQLSet {
	out := MySQLSet{}
	for src, ivs := range s {
		if _, ok := o[src]; ok {
			out[src] = append([]Interval(nil), ivs...)
		}
	}
	return out
}

// ContainsSet reports whether s holds every transaction of o.
func (s MySQLSet) ContainsSet(o MySQLSet) bool { return len(o.Subtract(s)) == 0 }

// MarshalText writes the text form (the set is stored in JSON metadata that way).
func (s MySQLSet) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads the text form.
func (s *MySQLSet) UnmarshalText(b []byte) error {
	v, err := ParseMySQLSet(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// NewPreviousGTIDs builds the PREVIOUS_GTIDS event that follows the Format_description
// of every MySQL binlog file: the set executed before the file, in binary form.
func NewPreviousGTIDs(serverID, timestamp, logPos uint32, set MySQLSet, checksummed bool) ([]byte, error) {
	body, err := set.AppendEncoded(nil)
	if err != nil {
		return nil, err
	}
	return build(MySQLPreviousGTIDsEvent, serverID, timestamp, logPos, 0, body, checksummed), nil
}

// ParsePreviousGTIDs decodes a PREVIOUS_GTIDS event.
func ParsePreviousGTIDs(ev []byte, checksummed bool) (MySQLSet, error) {
	b, err := body(ev, checksummed)
	if err != nil {
		return nil, err
	}
	set, rest, err := DecodeMySQLSet(b)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("binlog: %d bytes after the PREVIOUS_GTIDS set", len(rest))
	}
	return set, nil
}

// MySQLHeartbeatV2Event is MySQL 8.0.26+'s heartbeat, sent to replicas that set the
// heartbeat-v2 dump flag: its position is 64-bit.
const MySQLHeartbeatV2Event byte = 41

// NewHeartbeatV2 builds a MySQL heartbeat v2: header log_pos is the position modulo
// 2^32; the body holds fields as (type, length, value), each a length-encoded
// integer: 1 the file name, 2 the full position, then the end mark 0.
func NewHeartbeatV2(serverID uint32, file string, pos uint64, checksummed bool) []byte {
	var body []byte
	body = appendLenEnc(body, 1)
	body = appendLenEnc(body, uint64(len(file)))
	body = append(body, file...)
	p := appendLenEnc(nil, pos)
	body = appendLenEnc(body, 2)
	body = appendLenEnc(body, uint64(len(p)))
	body = append(body, p...)
	body = append(body, 0)
	return build(MySQLHeartbeatV2Event, serverID, 0, uint32(pos), 0, body, checksummed)
}

// appendLenEnc appends v as a MySQL length-encoded integer.
func appendLenEnc(b []byte, v uint64) []byte {
	switch {
	case v < 251:
		return append(b, byte(v))
	case v < 1<<16:
		return append(b, 0xfc, byte(v), byte(v>>8))
	case v < 1<<24:
		return append(b, 0xfd, byte(v), byte(v>>8), byte(v>>16))
	}
	return binary.LittleEndian.AppendUint64(append(b, 0xfe), v)
}
