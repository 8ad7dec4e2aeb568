// Package mysqlmaster is a MySQL master for tests: no MySQL server package exists for
// the platform Flotilla is tested on, so this serves real MySQL binlog recordings
// (test/fixtures/mysql-binlog) over the replication protocol as a MySQL 8.0 source
// does: the connect-time queries a replica and Flotilla send, COM_REGISTER_SLAVE,
// COM_BINLOG_DUMP_GTID with auto-position (every transaction not in the replica's
// set, from the newest file whose PREVIOUS_GTIDS it holds), rotation and heartbeats.
// Tests can append transactions (re-numbered in the master's own GTID sequence),
// rotate to a new file while replicas stream, and restart the master (every
// connection dropped, none accepted for a while, a new file after).
//
// Invariants: files only grow, and a file is closed (ends with a Rotate) before the
// next one exists; the executed set is the first file's PREVIOUS_GTIDS plus every
// GTID in the files.
package mysqlmaster

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// Master serves binlog files on a loopback port.
type Master struct {
	// User and Password are the replication account.
	User, Password string
	// UUID is the master's server_uuid, ServerID its server_id.
	UUID     string
	ServerID uint32

	addr string
	srv  *server.Server
	log  *slog.Logger

	mu       sync.Mutex
	ln       net.Listener // nil while the master is down (Restart)
	files    []*file
	executed binlog.MySQLSet
	vars     map[string]string // global variables the master reports
	changed  chan struct{}     // closed and replaced at every append
	conns    map[net.Conn]bool
	closed   bool
	quirks   Quirks
	// schemaDir holds the recording's CREATE TABLEs (expected/ beside the binlogs).
	schemaDir string
	stallGen  uint64 // dumps started before the last StallStreams send nothing
	// acked is the furthest semi-sync ACK received: file and position.
	ackedFile string
	ackedPos  uint64
}

// Fixtures is the directory of the shared MySQL recording, relative to a package
// directory under test/.
const Fixtures = "../fixtures/mysql-binlog/binlog"

// FixtureUUID is the recording's server_uuid.
const FixtureUUID = "d725c94e-606e-45cc-ade2-29bf1b217ca1"

// Start serves the binlog files of dir on 127.0.0.1 until the test ends.
func Start(t testing.TB, dir string) *Master {
	t.Helper()
	m, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// New serves the binlog files of dir on 127.0.0.1 until Close.
func New(dir string) (*Master, error) {
	files, executed, err := loadDir(dir)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h, _ := binlog.ParseHeader(files[0].fde())
	m := &Master{
		User: "repl", Password: "replpw", UUID: FixtureUUID, ServerID: h.ServerID,
		ln: ln, addr: ln.Addr().String(), log: slog.Default().With("component", "mysqlmaster"),
		files: files, executed: executed, changed: make(chan struct{}), conns: map[net.Conn]bool{},
		schemaDir: filepath.Join(filepath.Dir(dir), "expected"),
	}
	// MySQL 8's default: caching_sha2_password, whose full authentication without
	// TLS needs the server's RSA key.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		ln.Close()
		return nil, err
	}
	m.srv = server.NewServer("8.0.36", mysql.DEFAULT_COLLATION_ID, mysql.AUTH_CACHING_SHA2_PASSWORD, key, nil)
	m.vars = map[string]string{
		"version": "8.0.36", "version_comment": "mysqlmaster (Flotilla tests)", "log_bin": "1",
		"binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_checksum": "CRC32",
		"server_id": strconv.FormatUint(uint64(m.ServerID), 10), "server_uuid": m.UUID,
		"gtid_mode": "ON", "enforce_gtid_consistency": "ON", "read_only": "0",
		"gtid_purged": files[0].prev.String(), "rpl_semi_sync_master_enabled": "0",
		"binlog_transaction_compression": "OFF", "max_allowed_packet": "67108864",
	}
	go m.accept(ln)
	return m, nil
}

// Addr is the master's HOST:PORT.
func (m *Master) Addr() string { return m.addr }

// Set changes a global variable the master reports (gtid_mode, binlog_format, ...).
func (m *Master) Set(name, value string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.vars[strings.ToLower(name)] = value
}

// Quirks make the master bend the rules as some MySQL-compatible servers do.
type Quirks struct {
	// RefuseShowGrants answers SHOW GRANTS with error 1044, as masters do that
	// show a REPLICATION SLAVE-only user nothing of its grants.
	RefuseShowGrants bool
	// NoHeartbeats ignores the replica's heartbeat period: an idle master then sends
	// nothing at all.
	NoHeartbeats bool
}

// SetQuirks sets how the master bends the rules, for sessions from then on.
func (m *Master) SetQuirks(q Quirks) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.quirks = q
}

func (m *Master) quirk() Quirks {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.quirks
}

// StallStreams makes the dumps under way send nothing more, as over a link that
// died without a reset; dumps started afterwards stream normally.
func (m *Master) StallStreams() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stallGen++
}

// Executed is the master's gtid_executed.
func (m *Master) Executed() binlog.MySQLSet {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.executed.Clone()
}

// Close stops the master and drops every connection.
func (m *Master) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.down()
}

// down drops every connection and stops listening; the caller holds m.mu.
func (m *Master) down() {
	// The listener first: a client that sees its stream drop may dial at once,
	// and must find the port closed.
	if m.ln != nil {
		m.ln.Close()
		m.ln = nil
	}
	for c := range m.conns {
		c.Close()
	}
}

// Restart stops the master for hold, as a server restart does: every connection
// drops, nothing is accepted meanwhile, and the master comes back at the same
// address with a new binlog file.
func (m *Master) Restart(ctx context.Context, hold time.Duration) error {
	m.mu.Lock()
	m.down()
	m.mu.Unlock()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(hold):
	}
	if err := m.Rotate(); err != nil {
		return err
	}
	// The port came from the ephemeral range: while the master was down, an
	// outgoing connection may hold it for a moment.
	var ln net.Listener
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if ln, err = net.Listen("tcp", m.addr); err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("mysqlmaster: listen again at %s: %w", m.addr, err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		ln.Close()
		return errors.New("mysqlmaster: closed")
	}
	m.ln = ln
	go m.accept(ln)
	return nil
}

// FileNames is the master's binlog files, oldest first.
func (m *Master) FileNames() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, len(m.files))
	for i, f := range m.files {
		names[i] = f.name
	}
	return names
}

func (m *Master) accept(ln net.Listener) {
	for {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		m.mu.Lock()
		if m.closed || m.ln != ln { // closed, or restarted since
			m.mu.Unlock()
			nc.Close()
			return
		}
		m.conns[nc] = true
		m.mu.Unlock()
		go m.serve(nc)
	}
}

func (m *Master) serve(nc net.Conn) {
	defer func() {
		m.mu.Lock()
		delete(m.conns, nc)
		m.mu.Unlock()
		nc.Close()
	}()
	s := &session{m: m, nc: nc, vars: map[string]string{}}
	c, err := m.srv.NewConn(nc, m.User, m.Password, s)
	if err != nil {
		return
	}
	s.c = c
	for {
		if err := c.HandleCommand(); err != nil {
			return
		}
		if c.Closed() {
			return
		}
	}
}

// AppendTxn appends one transaction to the active file, as the master committing
// it: events is a whole transaction group starting with its GTID event (from a
// recording, say); its GTID becomes the master's next one.
func (m *Master) AppendTxn(events []byte) (binlog.MySQLGTID, error) {
	return m.AppendTaggedTxn(events, "")
}

// AppendTaggedTxn is AppendTxn with a tagged GTID (MySQL 8.3+, uuid:tag:N): the
// transaction's GTID event becomes a GTID_TAGGED event.
func (m *Master) AppendTaggedTxn(events []byte, tag string) (binlog.MySQLGTID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(events) < binlog.HeaderLen || events[4] != binlog.MySQLGTIDEvent {
		return binlog.MySQLGTID{}, errors.New("mysqlmaster: a transaction starts with its GTID event")
	}
	sid, err := binlog.ParseSID(m.UUID)
	if err != nil {
		return binlog.MySQLGTID{}, err
	}
	src := binlog.Source{SID: sid, Tag: tag}
	var next int64 = 1
	if ivs := m.executed[src]; len(ivs) > 0 {
		next = ivs[len(ivs)-1].End
	}
	return m.appendAs(events, binlog.MySQLGTID{Source: src, GNO: next})
}

// ApplyTxn appends a transaction under GTID g, as a replica with
// log_replica_updates writes what it applies (g is another server's, usually).
func (m *Master) ApplyTxn(events []byte, g binlog.MySQLGTID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(events) < binlog.HeaderLen || events[4] != binlog.MySQLGTIDEvent {
		return errors.New("mysqlmaster: a transaction starts with its GTID event")
	}
	_, err := m.appendAs(events, g)
	return err
}

// appendAs appends events as transaction g; the caller holds m.mu.
func (m *Master) appendAs(events []byte, g binlog.MySQLGTID) (binlog.MySQLGTID, error) {
	sid, src, next, tag := g.SID, g.Source, g.GNO, g.Tag
	ev := append([]byte(nil), events...)
	copy(ev[binlog.HeaderLen+1:], sid[:])
	binary.LittleEndian.PutUint64(ev[binlog.HeaderLen+17:], uint64(next))
	if tag != "" {
		size := binary.LittleEndian.Uint32(ev[9:])
		ev = append(binlog.NewMySQLGTIDTagged(m.ServerID, binlog.MySQLGTID{Source: src, GNO: next}, true), ev[size:]...)
	}
	f := m.files[len(m.files)-1]
	if err := f.appendEvents(ev); err != nil {
		return binlog.MySQLGTID{}, err
	}
	m.executed.Add(g)
	m.notify()
	return g, nil
}

// Rotate closes the active file with a Rotate and starts the next one, as FLUSH
// BINARY LOGS does.
func (m *Master) Rotate() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	last := m.files[len(m.files)-1]
	dot := strings.LastIndexByte(last.name, '.')
	n, err := strconv.Atoi(last.name[dot+1:])
	if err != nil {
		return err
	}
	name := fmt.Sprintf("%s.%06d", last.name[:dot], n+1)
	if err := last.appendEvents(binlog.NewRotate(m.ServerID, 0, 0, 0, name, 4, true)); err != nil {
		return err
	}
	nf, err := newFile(name, last.fde(), m.executed, m.ServerID)
	if err != nil {
		return err
	}
	last.closed = true
	m.files = append(m.files, nf)
	m.notify()
	return nil
}

func (m *Master) notify() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// TxnsOf returns the transaction groups of the recording's file name, each whole
// (GTID event first), in order.
func (m *Master) TxnsOf(name string) ([][]byte, error) {
	m.mu.Lock()
	var f *file
	for _, x := range m.files {
		if x.name == name {
			f = x
		}
	}
	m.mu.Unlock()
	if f == nil {
		return nil, fmt.Errorf("mysqlmaster: no file %s", name)
	}
	var txns [][]byte
	var grp binlog.MySQLGroup
	var cur []byte
	err := binlog.Split(f.data[4:], func(ev []byte) error {
		if binlog.OpensMySQLGroup(ev) {
			cur = nil
		}
		cur = append(cur, ev...)
		if grp.Next(ev, true) {
			txns = append(txns, cur)
			cur = nil
		}
		return nil
	})
	return txns, err
}

// snapshot returns file i's bytes now, whether it is closed, and the channel closed
// at the next change.
func (m *Master) snapshot(i int) ([]byte, string, bool, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.files[i]
	return f.data, f.name, f.closed, m.changed
}

// heartbeatNS reads a replica's heartbeat period (nanoseconds) from its variables.
func heartbeatNS(vars map[string]string) time.Duration {
	for _, k := range []string{"source_heartbeat_period", "master_heartbeat_period"} {
		if v, ok := vars[k]; ok {
			if ns, err := strconv.ParseUint(v, 10, 64); err == nil && ns > 0 {
				return time.Duration(ns)
			}
		}
	}
	return 0
}

// EnableSemiSync turns semi-sync on, as rpl_semi_sync_source_enabled=ON does: dumps
// of replicas that announce themselves (@rpl_semi_sync_replica=1) carry semi-sync
// headers asking for an ACK at each transaction's end. (The master does not wait for
// them; tests wait with WaitAck.)
func (m *Master) EnableSemiSync() {
	m.Set("rpl_semi_sync_source_enabled", "ON")
	m.Set("rpl_semi_sync_master_enabled", "ON")
}

func (m *Master) ack(file string, pos uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if file > m.ackedFile || file == m.ackedFile && pos > m.ackedPos {
		m.ackedFile, m.ackedPos = file, pos
	}
	m.notify()
}

// Acked returns the furthest semi-sync ACK received.
func (m *Master) Acked() (string, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ackedFile, m.ackedPos
}

// End returns the active file and its size: where the last transaction ends.
func (m *Master) End() (string, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.files[len(m.files)-1]
	return f.name, uint64(len(f.data))
}
