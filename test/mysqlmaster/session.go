package mysqlmaster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// session is one client connection: it answers the queries replicas, CDC tools
// and Flotilla's upstream checks send, and serves binlog dumps.
type session struct {
	m    *Master
	nc   net.Conn
	c    *server.Conn
	vars map[string]string // user variables (@name)
	semi bool              // the dump carries semi-sync headers
	gen  uint64            // Master.stallGen when the dump started
}

var (
	setUserVar = regexp.MustCompile(`(?i)^SET\s+@(\w+)\s*=\s*(.+?)\s*;?$`)
	selectVar  = regexp.MustCompile(`(?i)^SELECT\s+@@(?:GLOBAL\.|SESSION\.)?(\w+)(?:\s+AS\s+(\w+))?\s*;?$`)
	// selectVars is several variables in one row (SELECT @@a, @@GLOBAL.b).
	selectVars = regexp.MustCompile(`(?i)^SELECT\s+(@@[\w.]+(?:\s*,\s*@@[\w.]+)+)\s*;?$`)
	// infoColumns is what CDC tools ask for a table's columns (zongji, prepared).
	infoColumns = regexp.MustCompile(`(?is)^\s*SELECT\s+COLUMN_NAME\b.*\bFROM\s+INFORMATION_SCHEMA\.COLUMNS\b`)
	selectUser  = regexp.MustCompile(`(?i)^SELECT\s+@(\w+)\s*;?$`)
	showLike    = regexp.MustCompile(`(?i)^SHOW\s+(?:GLOBAL\s+|SESSION\s+)?VARIABLES\s+LIKE\s+'([^']*)'\s*;?$`)
	showEvents  = regexp.MustCompile(`(?i)^SHOW\s+BINLOG\s+EVENTS\s+IN\s+'([^']+)'\s+FROM\s+(\d+)\s+LIMIT\s+(\d+)\s*;?$`)
	showIn      = regexp.MustCompile(`(?i)^SHOW\s+(?:GLOBAL\s+)?VARIABLES\s+WHERE\s+Variable_name\s+IN\s*\(([^)]*)\)\s*;?$`)
)

// HandleQuery implements server.Handler.
func (s *session) HandleQuery(q string) (*mysql.Result, error) {
	q = strings.TrimSpace(q)
	upper := strings.ToUpper(q)
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	if strings.HasPrefix(upper, "SET ") {
		// SET @a = v[, @b = v...]: values are numbers, quoted strings without commas,
		// or @@GLOBAL.variables.
		for _, as := range strings.Split(strings.TrimSuffix(q[4:], ";"), ",") {
			mm := setUserVar.FindStringSubmatch("SET " + strings.TrimSpace(as))
			if mm == nil {
				continue // SET NAMES and the like
			}
			v := strings.Trim(mm[2], `'"`)
			if strings.HasPrefix(strings.ToLower(v), "@@global.") {
				v = s.m.vars[strings.ToLower(v[len("@@global."):])]
			}
			s.vars[strings.ToLower(mm[1])] = v
		}
		return &mysql.Result{}, nil
	}
	if mm := selectVar.FindStringSubmatch(q); mm != nil {
		name := strings.ToLower(mm[1])
		v, ok := s.m.globalVar(name)
		if !ok {
			return nil, mysql.NewError(mysql.ER_UNKNOWN_SYSTEM_VARIABLE, fmt.Sprintf("Unknown system variable '%s'", name))
		}
		col := mm[0][len("SELECT "):]
		if mm[2] != "" {
			col = mm[2]
		}
		return result([]string{col}, [][]any{{v}})
	}
	if mm := selectVars.FindStringSubmatch(q); mm != nil {
		var cols []string
		var row []any
		for _, c := range strings.Split(mm[1], ",") {
			c = strings.TrimSpace(c)
			name := strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(strings.ToLower(c[2:]), "global."), "session."))
			v, ok := s.m.globalVar(name)
			if !ok {
				return nil, mysql.NewError(mysql.ER_UNKNOWN_SYSTEM_VARIABLE, fmt.Sprintf("Unknown system variable '%s'", name))
			}
			cols, row = append(cols, c), append(row, v)
		}
		return result(cols, [][]any{row})
	}
	if mm := selectUser.FindStringSubmatch(q); mm != nil {
		v, ok := s.vars[strings.ToLower(mm[1])]
		if !ok {
			return result([]string{"@" + mm[1]}, [][]any{{nil}})
		}
		return result([]string{"@" + mm[1]}, [][]any{{v}})
	}
	if mm := showIn.FindStringSubmatch(q); mm != nil {
		var rows [][]any
		for _, n := range strings.Split(mm[1], ",") {
			name := strings.ToLower(strings.Trim(strings.TrimSpace(n), "'"))
			if v, ok := s.m.globalVar(name); ok {
				rows = append(rows, []any{name, v})
			}
		}
		return result([]string{"Variable_name", "Value"}, rows)
	}
	if mm := showLike.FindStringSubmatch(q); mm != nil {
		name := strings.ToLower(mm[1])
		var rows [][]any
		if v, ok := s.m.globalVar(name); ok {
			rows = append(rows, []any{name, v})
		}
		return result([]string{"Variable_name", "Value"}, rows)
	}
	if mm := showEvents.FindStringSubmatch(q); mm != nil {
		from, _ := strconv.Atoi(mm[2])
		limit, _ := strconv.Atoi(mm[3])
		return s.m.binlogEvents(mm[1], from, limit)
	}
	switch {
	case upper == "SELECT VERSION() AS VERSION":
		return result([]string{"version"}, [][]any{{s.m.vars["version"]}})
	case strings.HasPrefix(upper, "KILL "):
		return &mysql.Result{}, nil // a client stopping its own dump: the connection ends anyway
	case upper == "SELECT UNIX_TIMESTAMP()":
		return result([]string{"UNIX_TIMESTAMP()"}, [][]any{{time.Now().Unix()}})
	case upper == "SHOW GRANTS" && s.m.quirks.RefuseShowGrants: // s.m.mu is held
		return nil, mysql.NewError(mysql.ER_DBACCESS_DENIED_ERROR, "Access denied for user 'repl'@'%' to database 'mysql'")
	case upper == "SHOW GRANTS":
		return result([]string{"Grants for repl@%"}, [][]any{{"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `repl`@`%`"}})
	case upper == "SHOW BINARY LOGS" || upper == "SHOW MASTER LOGS":
		var rows [][]any
		for _, f := range s.m.files {
			rows = append(rows, []any{f.name, len(f.data), "No"})
		}
		return result([]string{"Log_name", "File_size", "Encrypted"}, rows)
	case upper == "SHOW MASTER STATUS" || upper == "SHOW BINARY LOG STATUS":
		f := s.m.files[len(s.m.files)-1]
		return result([]string{"File", "Position", "Binlog_Do_DB", "Binlog_Ignore_DB", "Executed_Gtid_Set"},
			[][]any{{f.name, len(f.data), "", "", s.m.executed.String()}})
	case upper == "SHOW REPLICA STATUS":
		// A source that replicates from nobody (a promoted replica, reset).
		return result([]string{"Replica_IO_Running", "Replica_SQL_Running"}, nil)
	case upper == "SHOW SLAVE HOSTS" || upper == "SHOW REPLICAS":
		return result([]string{"Server_id", "Host", "Port", "Source_id", "Replica_UUID"}, nil)
	}
	return nil, mysql.NewError(mysql.ER_NOT_SUPPORTED_YET, "mysqlmaster does not run: "+q)
}

// globalVar answers @@name; the caller holds m.mu.
func (m *Master) globalVar(name string) (string, bool) {
	if name == "gtid_executed" {
		return m.executed.String(), true
	}
	v, ok := m.vars[name]
	return v, ok
}

func result(names []string, rows [][]any) (*mysql.Result, error) {
	rs, err := mysql.BuildSimpleTextResultset(names, rows)
	if err != nil {
		return nil, err
	}
	return &mysql.Result{Resultset: rs}, nil
}

// UseDB implements server.Handler.
func (s *session) UseDB(string) error { return nil }

// HandleFieldList implements server.Handler.
func (s *session) HandleFieldList(string, string) ([]*mysql.Field, error) {
	return nil, mysql.NewError(mysql.ER_NOT_SUPPORTED_YET, "no tables")
}

// HandleStmtPrepare implements server.Handler: only the INFORMATION_SCHEMA.COLUMNS
// query of CDC tools (schema and table as parameters).
func (s *session) HandleStmtPrepare(q string) (int, int, any, error) {
	if infoColumns.MatchString(q) {
		return 2, len(columnInfoNames), nil, nil
	}
	return 0, 0, nil, mysql.NewError(mysql.ER_NOT_SUPPORTED_YET, "mysqlmaster prepares only the INFORMATION_SCHEMA.COLUMNS query")
}

// HandleStmtExecute implements server.Handler: a table's columns, from the
// recording's CREATE TABLE (expected/DB.TABLE.sql beside the binlogs).
func (s *session) HandleStmtExecute(_ any, _ string, args []any) (*mysql.Result, error) {
	if len(args) != 2 {
		return nil, mysql.NewError(mysql.ER_WRONG_ARGUMENTS, "want schema and table")
	}
	str := func(v any) string {
		switch b := v.(type) {
		case []byte:
			return string(b)
		case mysql.TypedBytes:
			return string(b.Bytes)
		}
		return fmt.Sprint(v)
	}
	rows, err := s.m.columnsOf(str(args[0]), str(args[1]))
	if err != nil {
		return nil, err
	}
	rs, err := mysql.BuildSimpleResultset(columnInfoNames, rows, true)
	if err != nil {
		return nil, err
	}
	return &mysql.Result{Resultset: rs}, nil
}

// HandleStmtClose implements server.Handler.
func (s *session) HandleStmtClose(any) error { return nil }

// HandleOtherCommand implements server.Handler: COM_REGISTER_SLAVE and the dumps.
func (s *session) HandleOtherCommand(cmd byte, data []byte) error {
	switch cmd {
	case mysql.COM_REGISTER_SLAVE:
		return nil
	case mysql.COM_BINLOG_DUMP_GTID:
		set, err := parseDumpGTID(data)
		if err != nil {
			return mysql.NewError(mysql.ER_MALFORMED_PACKET, err.Error())
		}
		return s.dump(set)
	case mysql.COM_BINLOG_DUMP:
		// pos u32, flags u16, server_id u32, file name.
		if len(data) < 10 {
			return mysql.NewError(mysql.ER_MALFORMED_PACKET, "short COM_BINLOG_DUMP")
		}
		// Some clients (zongji) end the name with a NUL, which MySQL ignores.
		return s.dumpFile(strings.TrimRight(string(data[10:]), "\x00"), int(binary.LittleEndian.Uint32(data)))
	}
	return mysql.NewError(mysql.ER_UNKNOWN_COM_ERROR, fmt.Sprintf("mysqlmaster: command 0x%02x", cmd))
}

// parseDumpGTID reads COM_BINLOG_DUMP_GTID: flags u16, server_id u32, name length
// u32, name, position u64, then (BINLOG_THROUGH_GTID) the set's length u32 and the
// set in binary form.
func parseDumpGTID(b []byte) (binlog.MySQLSet, error) {
	if len(b) < 10 {
		return nil, fmt.Errorf("COM_BINLOG_DUMP_GTID of %d bytes", len(b))
	}
	n := int(binary.LittleEndian.Uint32(b[6:]))
	b = b[10:]
	if len(b) < n+8 {
		return nil, fmt.Errorf("COM_BINLOG_DUMP_GTID: file name of %d bytes in %d", n, len(b))
	}
	b = b[n+8:]
	// The set follows whether or not BINLOG_THROUGH_GTID (4) is in flags (go-mysql
	// sends 0): MySQL reads it in both cases.
	if len(b) == 0 {
		return binlog.MySQLSet{}, nil
	}
	if len(b) < 4 || int(binary.LittleEndian.Uint32(b)) != len(b)-4 {
		return nil, fmt.Errorf("COM_BINLOG_DUMP_GTID: bad GTID set length")
	}
	set, _, err := binlog.DecodeMySQLSet(b[4:])
	return set, err
}

// dump streams what the replica lacks until it goes away.
func (s *session) dump(have binlog.MySQLSet) error {
	m := s.m
	m.mu.Lock()
	if extra := have.Subtract(m.executed); len(extra) > 0 {
		m.mu.Unlock()
		return mysql.NewError(mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG,
			"Cannot replicate because the source purged required binary logs. Replicate the missing transactions from elsewhere, or provision a new replica from backup. The GTID set sent by the replica has GTIDs the source lacks: "+extra.String())
	}
	start := -1
	for i := len(m.files) - 1; i >= 0; i-- {
		if have.ContainsSet(m.files[i].prev) {
			start = i
			break
		}
	}
	m.mu.Unlock()
	if start < 0 {
		return mysql.NewError(mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG,
			"Cannot replicate because the source purged required binary logs.")
	}
	return s.stream(start, 4, have)
}

// dumpFile serves COM_BINLOG_DUMP: from a file (the first one if name is empty) and
// position, everything.
func (s *session) dumpFile(name string, pos int) error {
	m := s.m
	m.mu.Lock()
	start := -1
	for i, f := range m.files {
		if f.name == name || name == "" && i == 0 {
			start = i
		}
	}
	m.mu.Unlock()
	if start < 0 {
		return mysql.NewError(mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG, "Could not find first log file name in binary log index file")
	}
	return s.stream(start, max(pos, 4), binlog.MySQLSet{})
}

// stream sends file start from offset off on, then the files after it, skipping the
// transactions in have, until the replica goes away.
func (s *session) stream(start, off int, have binlog.MySQLSet) error {
	m := s.m
	ck := strings.EqualFold(s.vars["master_binlog_checksum"], "CRC32") || strings.EqualFold(s.vars["source_binlog_checksum"], "CRC32")
	hb := heartbeatNS(s.vars)
	if m.quirk().NoHeartbeats {
		hb = 0
	}
	m.mu.Lock()
	s.semi = m.vars["rpl_semi_sync_source_enabled"] == "ON" && (s.vars["rpl_semi_sync_slave"] == "1" || s.vars["rpl_semi_sync_replica"] == "1")
	s.gen = m.stallGen
	m.mu.Unlock()
	if s.semi {
		go s.readAcks()
	}
	data, name, _, _ := m.snapshot(start)
	if err := s.send(binlog.NewRotate(m.ServerID, 0, 0, binlog.FlagArtificial, name, uint64(off), ck)); err != nil {
		return err
	}
	if off > 4 {
		// Inside a file: its Format_description first, at log_pos 0 and created 0.
		fde := append([]byte(nil), data[4:4+binary.LittleEndian.Uint32(data[4+9:])]...)
		binlog.ClearFDECreated(fde)
		binlog.SetLogPos(fde, 0, 0, true)
		if err := s.send(fde); err != nil {
			return err
		}
	}
	var grp binlog.MySQLGroup
	skip := false
	for i := start; ; {
		data, name, closed, changed := m.snapshot(i)
		for off < len(data) {
			size := int(binary.LittleEndian.Uint32(data[off+9:]))
			ev := data[off : off+size]
			off += size
			if binlog.OpensMySQLGroup(ev) {
				g, err := binlog.ParseMySQLGTIDEvent(ev)
				skip = err == nil && have.Contains(g)
			}
			end := grp.Next(ev, true)
			if !skip {
				if err := s.sendFlagged(ev, end); err != nil {
					return err
				}
			}
			if end {
				skip = false
			}
		}
		if closed {
			i, off = i+1, 4
			continue
		}
		var tick <-chan time.Time
		if hb > 0 {
			tick = time.After(hb)
		}
		select {
		case <-changed:
		case <-tick:
			if err := s.send(binlog.NewHeartbeat(m.ServerID, name, uint64(off), true)); err != nil {
				return err
			}
		}
	}
}

// waitUnstalled holds a dump that StallStreams stalled until the master closes
// (polling: the test master has nothing to wake it with; the dump does not read, so
// it cannot tell that its client left).
func (s *session) waitUnstalled() error {
	for {
		s.m.mu.Lock()
		stalled, closed := s.m.stallGen > s.gen, s.m.closed
		s.m.mu.Unlock()
		if !stalled {
			return nil
		}
		if closed {
			return net.ErrClosed
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// send writes one event packet (OK byte, event).
func (s *session) send(ev []byte) error { return s.sendFlagged(ev, false) }

// sendFlagged writes one event packet; to a semi-sync replica with the semi-sync
// header, asking for an ACK when ack is set (a transaction's last event). As MySQL's
// source does, the packet sequence restarts after an event that asks for an ACK.
func (s *session) sendFlagged(ev []byte, ack bool) error {
	if err := s.waitUnstalled(); err != nil {
		return err
	}
	pkt := make([]byte, 4, 7+len(ev))
	pkt = append(pkt, 0)
	if s.semi {
		flag := byte(0)
		if ack {
			flag = 1
		}
		pkt = append(pkt, 0xef, flag)
	}
	pkt = append(pkt, ev...)
	if err := s.c.WritePacket(pkt); err != nil {
		return err
	}
	if s.semi && ack {
		s.c.Sequence = 1
	}
	return nil
}

// readAcks reads a semi-sync replica's ACKs (0xEF, position u64, file name, each at
// sequence 0) from the connection while the dump writes to it, and records them.
func (s *session) readAcks() {
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(s.nc, hdr[:]); err != nil {
			return
		}
		n := int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16
		body := make([]byte, n)
		if _, err := io.ReadFull(s.nc, body); err != nil {
			return
		}
		if hdr[3] != 0 || n < 9 || body[0] != 0xef {
			s.m.log.Warn("bad semi-sync ACK", "seq", hdr[3], "bytes", n)
			continue
		}
		s.m.ack(string(body[9:]), binary.LittleEndian.Uint64(body[1:]))
	}
}

// columnInfoNames are the columns zongji selects from INFORMATION_SCHEMA.COLUMNS.
var columnInfoNames = []string{"COLUMN_NAME", "COLLATION_NAME", "CHARACTER_SET_NAME", "COLUMN_COMMENT", "COLUMN_TYPE"}

// createColumn is a column line of a recorded CREATE TABLE: name and type.
var createColumn = regexp.MustCompile("^\\s*`(\\w+)` ([a-z]+(?:\\([^)]*\\))?(?: unsigned)?)")

// columnsOf answers INFORMATION_SCHEMA.COLUMNS for a recorded table (no rows for a
// table the recording does not describe, as MySQL for an unknown one).
func (m *Master) columnsOf(schema, table string) ([][]any, error) {
	if m.schemaDir == "" || strings.ContainsAny(schema+table, "/\\.") {
		return nil, nil
	}
	b, err := os.ReadFile(filepath.Join(m.schemaDir, schema+"."+table+".sql"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rows [][]any
	for _, l := range strings.Split(string(b), "\n") {
		c := createColumn.FindStringSubmatch(l)
		if c == nil {
			continue
		}
		// MySQL answers NULL but for character columns; "" reads the same to
		// JavaScript clients, and go-mysql's binary result sets encode no NULLs.
		collation, charset := "", ""
		switch base, _, _ := strings.Cut(c[2], "("); base {
		case "char", "varchar", "text", "tinytext", "mediumtext", "longtext", "enum", "set":
			collation, charset = "utf8mb4_0900_bin", "utf8mb4"
		}
		rows = append(rows, []any{c[1], collation, charset, "", c[2]})
	}
	return rows, nil
}
