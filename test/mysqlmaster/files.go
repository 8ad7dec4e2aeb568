package mysqlmaster

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// file is one binlog file of the master: its bytes (the 4-byte magic included) and
// the GTID set executed before it.
type file struct {
	name   string
	data   []byte
	prev   binlog.MySQLSet
	closed bool // ends with a Rotate to the next file
}

// loadDir reads the binlog files of dir (named base.NNNNNN, as MySQL names them) in
// order, checking every event's checksum, and returns them with the GTID set they
// hold in all (the first file's PREVIOUS_GTIDS and every transaction).
func loadDir(dir string) ([]*file, binlog.MySQLSet, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.[0-9][0-9][0-9][0-9][0-9][0-9]"))
	if err != nil || len(names) == 0 {
		return nil, nil, fmt.Errorf("mysqlmaster: no binlog files in %s (%v)", dir, err)
	}
	sort.Strings(names)
	executed := binlog.MySQLSet{}
	var files []*file
	for i, n := range names {
		data, err := os.ReadFile(n)
		if err != nil {
			return nil, nil, err
		}
		f := &file{name: filepath.Base(n), data: data, closed: i < len(names)-1}
		if string(data[:4]) != "\xfebin" {
			return nil, nil, fmt.Errorf("mysqlmaster: %s is not a binlog file", n)
		}
		err = binlog.Split(data[4:], func(ev []byte) error {
			if err := binlog.VerifyChecksum(ev); err != nil {
				return fmt.Errorf("%s: %w", n, err)
			}
			switch ev[4] {
			case binlog.MySQLPreviousGTIDsEvent:
				prev, err := binlog.ParsePreviousGTIDs(ev, true)
				if err != nil {
					return err
				}
				f.prev = prev
				if i == 0 {
					executed.Union(prev)
				}
			case binlog.MySQLGTIDEvent:
				g, err := binlog.ParseMySQLGTIDEvent(ev)
				if err != nil {
					return err
				}
				executed.Add(g)
			}
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
		files = append(files, f)
	}
	return files, executed, nil
}

// fde returns the Format_description that opens f.
func (f *file) fde() []byte {
	size := binary.LittleEndian.Uint32(f.data[4+9:])
	return f.data[4 : 4+size]
}

// appendEvents appends events to f at its end, giving each its log_pos there and a
// fresh checksum.
func (f *file) appendEvents(events []byte) error {
	pos := uint64(len(f.data))
	buf := append([]byte(nil), events...)
	// Checksummed afresh, event by event: the events may have been edited
	// (flags, a query) since their trailers were written, which binlog.Placer, like
	// a replica, would keep as damage.
	if err := binlog.Split(buf, func(ev []byte) error {
		pos += uint64(len(ev))
		binlog.SetLogPos(ev, uint32(pos), 0, true)
		return nil
	}); err != nil {
		return err
	}
	f.data = append(f.data, buf...)
	return nil
}

// newFile starts the file after f: the same Format_description, then PREVIOUS_GTIDS.
func newFile(name string, fde []byte, prev binlog.MySQLSet, serverID uint32) (*file, error) {
	f := &file{name: name, data: []byte("\xfebin"), prev: prev.Clone()}
	pg, err := binlog.NewPreviousGTIDs(serverID, 0, 0, prev, true)
	if err != nil {
		return nil, err
	}
	// A file started by a rotation, not by a server start: created is 0, so replicas
	// do not take it for a master restart.
	fde = append([]byte(nil), fde...)
	binlog.ClearFDECreated(fde)
	if err := f.appendEvents(append(fde, pg...)); err != nil {
		return nil, err
	}
	return f, nil
}

// eventNames are SHOW BINLOG EVENTS's names of the event types a test reads.
var eventNames = map[byte]string{
	binlog.FormatDescription: "Format_desc", binlog.RotateEvent: "Rotate", binlog.QueryEvent: "Query", binlog.XIDEvent: "Xid",
	binlog.MySQLGTIDEvent: "Gtid", binlog.MySQLGTIDTaggedEvent: "Gtid_tagged", binlog.MySQLPreviousGTIDsEvent: "Previous_gtids",
}

// binlogEvents answers SHOW BINLOG EVENTS IN name FROM from LIMIT limit, with the
// Info of the GTID events as MySQL prints it; the caller holds m.mu.
func (m *Master) binlogEvents(name string, from, limit int) (*mysql.Result, error) {
	for _, f := range m.files {
		if f.name != name {
			continue
		}
		var rows [][]any
		for off := max(from, 4); off+binlog.HeaderLen <= len(f.data) && len(rows) < limit; {
			size := int(binary.LittleEndian.Uint32(f.data[off+9:]))
			ev := f.data[off : off+size]
			typ, ok := eventNames[ev[4]]
			if !ok {
				typ = fmt.Sprintf("Type_%d", ev[4])
			}
			info := ""
			switch ev[4] {
			case binlog.MySQLGTIDEvent:
				if g, err := binlog.ParseMySQLGTIDEvent(ev); err == nil {
					info = fmt.Sprintf("SET @@SESSION.GTID_NEXT= '%s'", g)
				}
			case binlog.MySQLGTIDTaggedEvent:
				if g, err := binlog.ParseMySQLGTIDTaggedEvent(ev); err == nil {
					info = fmt.Sprintf("SET @@SESSION.GTID_NEXT= '%s'", g)
				}
			case binlog.MySQLPreviousGTIDsEvent:
				if set, err := binlog.ParsePreviousGTIDs(ev, true); err == nil {
					info = set.String()
				}
			}
			h, _ := binlog.ParseHeader(ev)
			rows = append(rows, []any{f.name, off, typ, h.ServerID, off + size, info})
			off += size
		}
		return result([]string{"Log_name", "Pos", "Event_type", "Server_id", "End_log_pos", "Info"}, rows)
	}
	return nil, mysql.NewError(mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG, "Could not find target log "+name)
}
