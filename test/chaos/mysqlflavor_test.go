package chaos

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
	"github.com/flotilla-relay/flotilla/test/mysqlreplica"
)

// mysqlUpstream is the MySQL-flavor upstream: the test MySQL master (test/mysqlmaster,
// in-process: Debian packages no MySQL server) committing the recording's
// transactions again and again under its own GTIDs, and a MySQL-flavor replica
// (go-mysql's BinlogSyncer) that reconnects by GTID auto-position after every fault.
// It takes every master-restart and master-link fault beside the scheduled MariaDB
// master, and its replica moves at every move-replica: the schedule, and so every
// seed's replay, is the MariaDB upstreams'.
type mysqlUpstream struct {
	name      string
	master    *mysqlmaster.Master
	proxy     *proxy
	recording [][]byte

	mu       sync.Mutex
	acked    int // transactions the master committed while the run wrote
	via      int // the node the replica reads
	moved    context.CancelFunc
	received map[int64][sha256.Size]byte // by sequence number, what the replica got
	last     int64                       // the replica's highest sequence number
	source   binlog.Source               // the master's: every GTID is its own
	problems []string
	resumes  int
	// stopRead ends the replica; readDone is closed once it has.
	stopRead context.CancelFunc
	readDone chan struct{}
}

// startMySQLUpstream starts the master with the recording's 309 transactions.
func (r *run) startMySQLUpstream() *mysqlUpstream {
	t := r.t
	m := mysqlmaster.Start(t, filepath.Join("..", "fixtures", "mysql-binlog", "binlog"))
	u := &mysqlUpstream{name: "my0", master: m, received: map[int64][sha256.Size]byte{}}
	for _, f := range m.FileNames() {
		txns, err := m.TxnsOf(f)
		if err != nil {
			t.Fatal(err)
		}
		u.recording = append(u.recording, txns...)
	}
	p, err := newProxy(m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.close() })
	u.proxy = p
	sid, err := binlog.ParseSID(m.UUID)
	if err != nil {
		t.Fatal(err)
	}
	u.source = binlog.Source{SID: sid}
	return u
}

// highest is the last sequence number of source src in s.
func highest(s binlog.MySQLSet, src binlog.Source) int64 {
	if ivs := s[src]; len(ivs) > 0 {
		return ivs[len(ivs)-1].End - 1
	}
	return 0
}

// write commits the recording's transactions in turn until ctx ends, rotating
// every 500 as max_binlog_size would.
func (u *mysqlUpstream) write(ctx context.Context, h *history) {
	for i := 0; ctx.Err() == nil; i++ {
		g, err := u.master.AppendTxn(u.recording[i%len(u.recording)])
		if err != nil {
			h.add("write-failed", map[string]any{"upstream": u.name, "err": err.Error()})
			u.problem("the master stopped committing: %v", err)
			return
		}
		u.mu.Lock()
		u.acked++
		u.mu.Unlock()
		h.add("ack", map[string]any{"upstream": u.name, "gtid": g.String()})
		if i%500 == 499 {
			if err := u.master.Rotate(); err != nil {
				h.add("write-failed", map[string]any{"upstream": u.name, "err": err.Error()})
				u.problem("the master stopped rotating: %v", err)
				return
			}
		}
		time.Sleep(15 * time.Millisecond)
	}
}

func (u *mysqlUpstream) problem(format string, args ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.problems = append(u.problems, fmt.Sprintf("%s: ", u.name)+fmt.Sprintf(format, args...))
}

// move points the replica at the next node.
func (u *mysqlUpstream) move(nodes int) (from, to int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	from = u.via
	u.via = (u.via + 1) % nodes
	if u.moved != nil {
		u.moved()
	}
	return from, u.via
}

// read is the replica until ctx ends: it reads from its node, and after any error
// (a fault, a move) resumes from what it holds. Every transaction must be the next
// of the master's sequence, never one it holds (mysqlreplica.ErrDuplicate).
func (u *mysqlUpstream) read(ctx context.Context, r *run) {
	defer close(u.readDone)
	var rep *mysqlreplica.Replica
	executed := binlog.MySQLSet{}
	defer func() {
		if rep != nil {
			rep.Close()
		}
	}()
	for ctx.Err() == nil {
		u.mu.Lock()
		addr := "127.0.0.1:" + r.nodes[u.via].MySQLPort()
		cctx, cancel := context.WithCancel(ctx)
		u.moved = cancel
		u.mu.Unlock()
		var err error
		if rep == nil {
			var cfg replication.BinlogSyncerConfig
			if cfg, err = mysqlreplica.Config(addr, "r"+u.name, replicaPass, 7001); err == nil {
				if rep, err = mysqlreplica.Start(cfg, executed); err == nil {
					rep.DropTxns = true
				}
			}
		} else {
			u.mu.Lock()
			u.resumes++
			u.mu.Unlock()
			err = rep.Reconnect(addr)
		}
		for err == nil {
			var g binlog.MySQLGTID
			var txn []byte
			if g, txn, err = rep.Next(cctx); err != nil {
				break
			}
			u.mu.Lock()
			if g.Source != u.source {
				u.problems = append(u.problems, fmt.Sprintf("%s: the replica got %s, not a transaction of the master's own source", u.name, g))
			}
			if g.GNO != u.last+1 {
				u.problems = append(u.problems, fmt.Sprintf("%s: the replica got %s after sequence number %d (a gap or a reordering)", u.name, g, u.last))
			}
			u.last = max(u.last, g.GNO)
			u.received[g.GNO] = sha256.Sum256(txn)
			u.mu.Unlock()
		}
		cancel()
		if errors.Is(err, mysqlreplica.ErrDuplicate) {
			u.problem("%v", err)
		}
		if rep != nil {
			executed = rep.Executed
		}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// check waits for the replica to hold everything the master committed, then
// compares each transaction with the master's bytes, and the group's members and
// served files as for the other upstreams.
func (u *mysqlUpstream) check(r *run, out string) (int, []string) {
	want := u.master.Executed()
	top := highest(want, u.source)
	if len(want) != 1 {
		r.t.Fatalf("%s: the master's executed set %s has more than its own source", u.name, want)
	}
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		u.mu.Lock()
		done := u.last >= top
		u.mu.Unlock()
		if done {
			break
		}
	}
	u.stopRead()
	<-u.readDone
	u.mu.Lock()
	defer u.mu.Unlock()
	violations := append([]string(nil), u.problems...)
	if u.last < top {
		violations = append(violations, fmt.Sprintf("%s: the replica (via node %d) reached sequence number %d, the master %d", u.name, u.via+1, u.last, top))
	}
	mismatched := 0
	for _, f := range u.master.FileNames() {
		txns, err := u.master.TxnsOf(f)
		if err != nil {
			r.t.Fatal(err)
		}
		for _, tx := range txns {
			g, err := binlog.ParseMySQLGTIDEvent(tx)
			if err != nil {
				r.t.Fatal(err)
			}
			if got, ok := u.received[g.GNO]; ok && got != sha256.Sum256(tx) {
				if mismatched++; mismatched <= 3 {
					violations = append(violations, fmt.Sprintf("%s: the replica's %s differs from the master's", u.name, g))
				}
			}
		}
	}
	r.t.Logf("CHAOS %s: the MySQL-flavor replica resumed %d times", u.name, u.resumes)
	violations = append(violations, r.checkMembers(u.name, want.String())...)
	violations = append(violations, r.checkServedFiles(out, u.name, r.fetchMySQLFiles(u.name), checkMySQLFile)...)
	return u.acked, violations
}

// checkMySQLFile decodes a served MySQL binlog file with go-mysql's parser (no
// mysqlbinlog ships for Debian), every event and its checksum, and requires every
// event but the file's own (format description, previous GTIDs, rotate) to belong
// to a whole transaction.
func checkMySQLFile(path string) error {
	p := replication.NewBinlogParser()
	p.SetVerifyChecksum(true)
	var grp binlog.MySQLGroup
	open := ""
	err := p.ParseFile(path, 4, func(e *replication.BinlogEvent) error {
		ev := e.RawData
		switch {
		case binlog.OpensMySQLGroup(ev):
			if open != "" {
				return fmt.Errorf("transaction %s has no commit", open)
			}
			g, err := binlog.ParseMySQLGTIDEvent(ev)
			if err != nil {
				return err
			}
			open = g.String()
		case ev[4] == binlog.FormatDescription || ev[4] == binlog.MySQLPreviousGTIDsEvent || ev[4] == binlog.RotateEvent:
			if open != "" {
				return fmt.Errorf("event type %d inside transaction %s", ev[4], open)
			}
			return nil
		case open == "":
			return fmt.Errorf("event type %d at %d outside any transaction", ev[4], e.Header.LogPos)
		}
		if grp.Next(ev, true) {
			open = ""
		}
		return nil
	})
	if err != nil {
		return err
	}
	if open != "" {
		return fmt.Errorf("transaction %s has no commit", open)
	}
	b, err := os.ReadFile(path)
	if err == nil && !bytes.HasPrefix(b, []byte("\xfebin")) {
		err = errors.New("no binlog magic")
	}
	return err
}

// fetchMySQLFiles copies upstream name's served files from a node as
// mysqlbinlog --raw --read-from-remote-server does, with go-mysql's syncer in
// MySQL flavor (mariadb-binlog refuses a MySQL server): a file/position dump from
// the oldest file held, up to the end SHOW MASTER STATUS named first.
func (r *run) fetchMySQLFiles(name string) func(int, string) error {
	return func(n int, dst string) error {
		addr := "127.0.0.1:" + r.nodes[n].MySQLPort()
		c, err := client.Connect(addr, "r"+name, replicaPass, "")
		if err != nil {
			return err
		}
		st, err := c.Execute("SHOW MASTER STATUS")
		if err != nil {
			c.Close()
			return err
		}
		// From the oldest file the node holds (a purge by hand, or retention in a
		// run longer than retention_age, moves it).
		logs, err := c.Execute("SHOW BINARY LOGS")
		c.Close()
		if err != nil {
			return err
		}
		first, err := logs.GetString(0, 0)
		if err != nil {
			return fmt.Errorf("SHOW BINARY LOGS: %w", err)
		}
		endFile, err1 := st.GetString(0, 0)
		endPos, err2 := st.GetUint(0, 1)
		if err := errors.Join(err1, err2); err != nil || endFile == "" {
			return fmt.Errorf("SHOW MASTER STATUS: %q %d: %v", endFile, endPos, err)
		}
		cfg, err := mysqlreplica.Config(addr, "r"+name, replicaPass, 7002)
		if err != nil {
			return err
		}
		bs := replication.NewBinlogSyncer(cfg)
		defer bs.Close()
		s, err := bs.StartSync(gomysql.Position{Name: first, Pos: 4})
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(r.ctx, 10*time.Minute) // a 30-minute run serves hundreds of files
		defer cancel()
		var f *os.File
		defer func() {
			if f != nil {
				f.Close()
			}
		}()
		cur := ""
		open := func(file string) error {
			if f != nil {
				if err := f.Close(); err != nil {
					return err
				}
			}
			cur = file
			f, err = os.OpenFile(filepath.Join(dst, file), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				return err
			}
			if fi, err := f.Stat(); err == nil && fi.Size() == 0 {
				_, err = f.Write([]byte("\xfebin"))
				return err
			}
			return nil
		}
		for {
			e, err := s.GetEvent(ctx)
			if err != nil {
				return fmt.Errorf("at %s: %w", cur, err)
			}
			ev := e.RawData
			h, err := binlog.ParseHeader(ev)
			if err != nil {
				return err
			}
			switch {
			case h.Type == binlog.HeartbeatEvent || h.Type == binlog.MySQLHeartbeatV2Event:
				continue
			case h.Type == binlog.RotateEvent && (h.Flags&binlog.FlagArtificial != 0 || h.LogPos == 0):
				if err := open(rotateName(ev)); err != nil {
					return err
				}
				continue
			}
			if f == nil {
				return fmt.Errorf("an event before the dump named its file")
			}
			if _, err := f.Write(ev); err != nil {
				return err
			}
			if h.Type == binlog.RotateEvent {
				if err := open(rotateName(ev)); err != nil {
					return err
				}
				continue
			}
			if cur == endFile && uint64(h.LogPos) >= endPos {
				return nil
			}
		}
	}
}

// rotateName is the file a Rotate event names: the artificial one that opens a dump
// carries a checksum only when the replica's checksum setting asks for one, so the
// name ends before the checksum only when there is a valid one.
func rotateName(ev []byte) string {
	end := len(ev)
	if binlog.VerifyChecksum(ev) == nil {
		end -= binlog.ChecksumLen
	}
	return string(ev[binlog.HeaderLen+8 : end])
}
