package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// semiSyncArgs make a master wait, at every commit, for Flotilla's acknowledgement
// that the group's quorum holds the transaction (AFTER_SYNC, and a timeout longer
// than any run: an acknowledged commit is never asynchronous). A promoted standby
// restarts with them.
func semiSyncArgs() []string {
	return []string{"--rpl-semi-sync-master-enabled=ON", "--rpl-semi-sync-master-wait-point=AFTER_SYNC", "--rpl-semi-sync-master-timeout=3600000"}
}

// semiSyncOn is semiSyncArgs at run time: a master's set-up, and a standby's
// replication, must not wait for acknowledgements.
const semiSyncOn = "SET GLOBAL rpl_semi_sync_master_wait_point=AFTER_SYNC, rpl_semi_sync_master_timeout=3600000, rpl_semi_sync_master_enabled=ON"

// startStandby starts the next promotion candidate of master m: an empty server
// with its own binary log that replicates the upstream from Flotilla (node via)
// from the group's first transaction, as a replica rebuilt from Flotilla would.
func (r *run) startStandby(m *master, via int) {
	t := r.t
	m.standbys++
	opt := mariadbtest.Options{ServerID: uint32(200 + 10*m.index + m.standbys), DomainID: m.opt.DomainID, LogBin: true, MaxBinlogSize: m.opt.MaxBinlogSize,
		ExtraArgs: []string{"--gtid-strict-mode=1"}}
	port, err := mariadbtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	opt.Port = port
	dir := filepath.Join(r.dir, fmt.Sprintf("%s-standby%d", m.name, m.standbys))
	srv, err := mariadbtest.Start(r.ctx, dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	// The harness's own set-up is local history: a standby holds only what it
	// replicates, or the repoint would refuse its errant transactions.
	if err := srv.Exec(r.ctx, "RESET MASTER"); err != nil {
		t.Fatal(err)
	}
	m.standby = &replica{srv: srv, user: "r" + m.name, gtid: true, via: via}
	// Promoted, it restarts as the semi-sync master it became.
	m.standbyDir, m.standbyOpt = dir, opt
	m.standbyOpt.ExtraArgs = append(opt.ExtraArgs[:len(opt.ExtraArgs):len(opt.ExtraArgs)], semiSyncArgs()...)
	r.point(m.standby, via)
}

// failover kills master m and promotes its standby: once the standby holds what
// the group holds (as an orchestrator waits before promoting), it stops
// replicating, Flotilla is repointed at it (through a proxy of its own), the writer
// moves to it, and a new standby starts.
func (r *run) failover(u int) {
	t, m := r.t, r.masters[u]
	old := m.server()
	if err := old.Kill(); err != nil {
		t.Errorf("kill master %s: %v", m.name, err)
	}
	sb := m.standby
	// What the group holds: the furthest member's position, once two looks
	// agree (the master is dead: it only moves while members catch up).
	var held string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		h := r.groupGTID(m.name)
		if h != "" && h == held {
			break
		}
		held = h
		if time.Now().After(deadline) {
			t.Fatalf("failover of %s: the group's GTID position is unknown or moving for a minute", m.name)
		}
	}
	if err := caughtUp(r.ctx, sb.srv, held); err != nil {
		// A violation (what the standby replicated from Flotilla is wrong): the
		// run goes on with the old master back, and the checker reports it.
		r.violation(fmt.Sprintf("%s: the standby never reached the group's %s, no failover: %v", m.name, held, err))
		m.mu.Lock()
		defer m.mu.Unlock()
		srv, err := mariadbtest.Start(r.ctx, m.dir, m.opt)
		if err != nil {
			t.Fatalf("restart master %s: %v", m.name, err)
		}
		m.srv = srv
		return
	}
	for _, q := range []string{"STOP SLAVE", "RESET SLAVE ALL", semiSyncOn} {
		if err := sb.srv.Exec(r.ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	p, err := newProxy(sb.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.close() })
	var out string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		if out, err = r.live().CLI(r.ctx, "upstream", "repoint", m.name, "--source", p.Addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("repoint %s to its standby: %v\n%s", m.name, err, out)
		}
	}
	m.mu.Lock()
	m.srv, m.dir, m.opt = sb.srv, m.standbyDir, m.standbyOpt
	m.failovers++
	m.mu.Unlock()
	r.masterProxy[u].close()
	r.masterProxy[u] = p
	r.startStandby(m, (sb.via+1)%len(r.nodes))
}

// groupGTID is the furthest GTID position a member of the upstream's group has
// executed (one domain: the highest sequence number).
func (r *run) groupGTID(name string) string {
	out, err := r.live().CLI(r.ctx, "upstream", "get", name, "-o", "json")
	var u struct {
		Group struct {
			MemberStatus []struct {
				ExecutedGtid string `json:"executedGtid"`
				Reachable    bool   `json:"reachable"`
			} `json:"memberStatus"`
		} `json:"group"`
	}
	if err != nil || json.Unmarshal([]byte(out), &u) != nil {
		return ""
	}
	best, bestSeq := "", -1
	for _, ms := range u.Group.MemberStatus {
		seq, err := strconv.Atoi(ms.ExecutedGtid[strings.LastIndex(ms.ExecutedGtid, "-")+1:])
		if ms.Reachable && err == nil && seq > bestSeq {
			best, bestSeq = ms.ExecutedGtid, seq
		}
	}
	return best
}

// semiSyncSettled waits until no session of a semi-sync master waits for an
// acknowledgement.
func semiSyncSettled(ctx context.Context, srv *mariadbtest.Server) error {
	var rows [][]string
	var err error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(200 * time.Millisecond) {
		rows, err = srv.Query(ctx, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_wait_sessions'")
		if err == nil && len(rows) == 1 && rows[0][1] == "0" {
			return nil
		}
	}
	return fmt.Errorf("commits still wait for Flotilla's semi-sync acknowledgement after a minute: %v %v", rows, err)
}
