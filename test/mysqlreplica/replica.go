// Package mysqlreplica is a MySQL replica for tests: go-mysql's BinlogSyncer in
// MySQL flavor (a client nobody here wrote) reading a source with GTID
// auto-position, collecting whole transactions by GTID.
//
// Invariants: Executed is the set the replica asked for plus every transaction it
// received whole; Order and Txns hold exactly the transactions received whole,
// in arrival order; a transaction arriving twice, one cut off by the next, an
// event outside any transaction or a checksum that fails is an error, never
// received; a source that stops in the middle of a transaction loses it
// (Reconnect drops the partial transaction and resumes from Executed, as a MySQL
// replica does).
package mysqlreplica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/flotilla-relay/flotilla/internal/binlog"
)

// ErrDuplicate is what Until returns for a transaction the replica already holds.
var ErrDuplicate = errors.New("transaction received twice")

// Replica is one replication connection and what it received.
type Replica struct {
	// Executed is the GTID set the replica holds; Txns its transactions by GTID
	// (each whole, GTID event first) and Order their GTIDs in arrival order.
	Executed binlog.MySQLSet
	Txns     map[string][]byte
	Order    []string
	// DropTxns keeps Txns empty: a long run checks each transaction as it
	// arrives (Until's onTxn) instead of holding them all.
	DropTxns bool

	cfg     replication.BinlogSyncerConfig
	bs      *replication.BinlogSyncer
	s       *replication.BinlogStreamer
	cur     []byte
	curID   string
	curGTID binlog.MySQLGTID
	grp     binlog.MySQLGroup
}

// Config is the syncer configuration of a replica of addr (HOST:PORT): raw events,
// heartbeats every 300 ms, no retries of its own (Reconnect is the caller's
// decision) and a read timeout that takes a silent link for a dead one.
func Config(addr, user, password string, serverID uint32) (replication.BinlogSyncerConfig, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return replication.BinlogSyncerConfig{}, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return replication.BinlogSyncerConfig{}, err
	}
	return replication.BinlogSyncerConfig{
		ServerID: serverID, Flavor: mysql.MySQLFlavor, Host: host, Port: uint16(port), User: user, Password: password,
		RawModeEnabled: true, VerifyChecksum: true, HeartbeatPeriod: 300 * time.Millisecond, ReadTimeout: 10 * time.Second, DisableRetrySync: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, nil
}

// Start connects with cfg and asks for every transaction not in from.
func Start(cfg replication.BinlogSyncerConfig, from binlog.MySQLSet) (*Replica, error) {
	r := &Replica{cfg: cfg, Executed: from.Clone(), Txns: map[string][]byte{}}
	if err := r.connect(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Replica) connect() error {
	set, err := mysql.ParseMysqlGTIDSet(r.Executed.String())
	if err != nil {
		return fmt.Errorf("mysqlreplica: the executed set %s: %w", r.Executed, err)
	}
	r.bs = replication.NewBinlogSyncer(r.cfg)
	s, err := r.bs.StartSyncGTID(set)
	if err != nil {
		r.bs.Close()
		r.bs = nil
		return fmt.Errorf("mysqlreplica: dump from %s:%d: %w", r.cfg.Host, r.cfg.Port, err)
	}
	r.s = s
	return nil
}

// Reconnect drops the connection and any partial transaction, and resumes from
// Executed at addr (HOST:PORT; "" keeps the address).
func (r *Replica) Reconnect(addr string) error {
	r.Close()
	if addr != "" {
		cfg, err := Config(addr, r.cfg.User, r.cfg.Password, r.cfg.ServerID)
		if err != nil {
			return err
		}
		r.cfg.Host, r.cfg.Port = cfg.Host, cfg.Port
	}
	r.cur, r.curID, r.curGTID, r.grp = nil, "", binlog.MySQLGTID{}, binlog.MySQLGroup{}
	return r.connect()
}

// Close ends the connection.
func (r *Replica) Close() {
	if r.bs != nil {
		r.bs.Close()
		r.bs, r.s = nil, nil
	}
}

// Until reads transactions until Executed holds want.
func (r *Replica) Until(ctx context.Context, want binlog.MySQLSet) error {
	for !r.Executed.ContainsSet(want) {
		if _, _, err := r.Next(ctx); err != nil {
			return fmt.Errorf("replica at %s, waiting for %s: %w", r.Executed, want, err)
		}
	}
	return nil
}

// Next reads events until a transaction completes and returns its GTID and its
// events (GTID event first).
func (r *Replica) Next(ctx context.Context) (binlog.MySQLGTID, []byte, error) {
	for {
		if r.s == nil {
			return binlog.MySQLGTID{}, nil, errors.New("mysqlreplica: not connected")
		}
		e, err := r.s.GetEvent(ctx)
		if err != nil {
			return binlog.MySQLGTID{}, nil, err
		}
		ev := e.RawData
		switch ev[4] {
		case binlog.HeartbeatEvent, binlog.MySQLHeartbeatV2Event:
			continue
		case binlog.RotateEvent, binlog.FormatDescription, binlog.MySQLPreviousGTIDsEvent:
			if r.curID != "" {
				return binlog.MySQLGTID{}, nil, fmt.Errorf("mysqlreplica: event type %d inside transaction %s", ev[4], r.curID)
			}
			continue
		}
		if binlog.OpensMySQLGroup(ev) {
			g, err := binlog.ParseMySQLGTIDEvent(ev)
			if err != nil {
				return binlog.MySQLGTID{}, nil, err
			}
			if r.curID != "" {
				return binlog.MySQLGTID{}, nil, fmt.Errorf("mysqlreplica: transaction %s cut off by %s", r.curID, g)
			}
			if r.Executed.Contains(g) {
				return binlog.MySQLGTID{}, nil, fmt.Errorf("%s: %w", g, ErrDuplicate)
			}
			r.cur, r.curID, r.curGTID = nil, g.String(), g
		} else if r.curID == "" {
			return binlog.MySQLGTID{}, nil, fmt.Errorf("mysqlreplica: event type %d outside any transaction (after %s)", ev[4], r.Executed)
		}
		r.cur = append(r.cur, ev...)
		if r.grp.Next(ev, true) {
			id, g, txn := r.curID, r.curGTID, r.cur
			r.cur, r.curID, r.curGTID = nil, "", binlog.MySQLGTID{}
			if !r.DropTxns {
				r.Txns[id] = txn
			}
			r.Executed.Add(g)
			r.Order = append(r.Order, id)
			return g, txn, nil
		}
	}
}
