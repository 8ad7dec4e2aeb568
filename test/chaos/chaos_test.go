package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/faultfs"
	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

const (
	upstreamUser = "flotilla"
	upstreamPass = "up-secret"
	replicaPass  = "repl-secret"
	// The disk-full target's reserve is a margin below the free space seen at
	// start (room for what the run writes); the fault fills the filesystem to
	// diskUnder below it, while the other nodes keep their default reserve.
	diskUnder = 256 << 20
)

// master is an upstream's MariaDB master and the writer that keeps committing to it.
type master struct {
	name  string
	index int
	// semi masters wait for Flotilla's acknowledgement at every commit, and keep
	// a standby (a replica of Flotilla) that the master-failover fault promotes.
	semi                bool
	standby             *replica
	standbyDir          string
	standbyOpt          mariadbtest.Options
	standbys, failovers int
	mu                  sync.Mutex
	dir                 string // the current master's (guarded by mu, as opt and srv)
	opt                 mariadbtest.Options
	srv                 *mariadbtest.Server
	acked               []int // ids the master acknowledged, in commit order
	attempts            int
}

func (m *master) server() *mariadbtest.Server {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.srv
}

// write commits rows with increasing ids until ctx ends; a failed commit's id is
// never reused (it may have committed without its acknowledgement).
func (m *master) write(ctx context.Context, h *history) {
	for id := 1; ctx.Err() == nil; id++ {
		m.mu.Lock()
		m.attempts++
		m.mu.Unlock()
		err := m.server().Exec(ctx, "INSERT INTO chaos.t VALUES (?, ?)", id, strings.Repeat(strconv.Itoa(id%10), 64+id%500))
		if err != nil {
			h.add("write-failed", map[string]any{"upstream": m.name, "id": id, "err": err.Error()})
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		m.mu.Lock()
		m.acked = append(m.acked, id)
		m.mu.Unlock()
		h.add("ack", map[string]any{"upstream": m.name, "id": id})
		time.Sleep(15 * time.Millisecond)
	}
}

// replica is a MariaDB replica of an upstream through one node.
type replica struct {
	srv  *mariadbtest.Server
	user string
	gtid bool // else file/position
	via  int  // node index
}

type statusJSON struct {
	MetaLeader string `json:"metaLeader"`
	Upstreams  []struct {
		Upstream struct {
			Name string `json:"name"`
		} `json:"upstream"`
		Group struct {
			Members    []string `json:"members"`
			LeaderNode string   `json:"leaderNode"`
		} `json:"group"`
	} `json:"upstreams"`
}

// run is one chaos run.
type run struct {
	t        *testing.T
	ctx      context.Context
	dir      string
	nodes    []*flotillatest.Node
	masters  []*master
	replicas [][]*replica
	hist     *history
	diskNode int    // the node the disk-full fault targets
	reserve  uint64 // its --min-free-disk
	slowNode int    // the node the slow-disk and power-cut faults target (the only one with the knobs)
	// The proxies at every node's raft and admin address and every master's;
	// cut is the nodes a network fault isolates now (no CLI call goes there).
	raftProxy, adminProxy, masterProxy []*proxy
	cut                                map[int]bool
	my                                 *mysqlUpstream // the MySQL-flavor upstream
	// found is what the run saw go wrong before the checker (a fault that could
	// not proceed because of one): violations too.
	found []string
}

// violation records a problem seen during the run.
func (r *run) violation(v string) {
	r.t.Logf("CHAOS violation: %s", v)
	r.found = append(r.found, v)
}

// live returns a running node to ask.
func (r *run) live() *flotillatest.Node {
	for i, n := range r.nodes {
		if n.Running() && !r.cut[i] {
			return n
		}
	}
	r.t.Fatal("no node is running and reachable")
	return nil
}

func (r *run) status() statusJSON {
	r.t.Helper()
	var st statusJSON
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		out, err := r.live().CLI(r.ctx, "status", "-o", "json")
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && st.MetaLeader != "" && st.MetaLeader != "0" {
			return st
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("status: %v\n%s", err, out)
		}
	}
}

// roleNode is the index of the node holding a role in upstream u's group, once
// the group has a leader.
func (r *run) roleNode(u int, role Kind) int {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		st := r.status()
		if role == KillMetaLeader {
			id, _ := strconv.Atoi(st.MetaLeader)
			return id - 1
		}
		for _, s := range st.Upstreams {
			leader, _ := strconv.Atoi(s.Group.LeaderNode)
			if s.Upstream.Name != r.masters[u].name || leader == 0 {
				continue
			}
			if role != KillFollower {
				return leader - 1
			}
			for _, m := range s.Group.Members {
				if id, _ := strconv.Atoi(m); id != leader {
					return id - 1
				}
			}
		}
	}
	r.t.Fatalf("%s: upstream %s's group has no leader (or no follower) for a minute", role, r.masters[u].name)
	return 0
}

// restart starts node n again after a kill; a node that cannot start is a
// violation, named by its log's first error.
func (r *run) restart(n int) error {
	if err := r.nodes[n].TryStart(r.ctx); err != nil {
		why := err.Error()
		for _, w := range []string{"level=ERROR", "panic:"} { // the last panic, else the last error
			if l := r.nodes[n].LogGrep(w); l != "" {
				why = l[strings.LastIndex(l, "\n")+1:]
			}
		}
		return fmt.Errorf("node %d did not start again: %s", n+1, why)
	}
	return nil
}

// healthy waits until the cluster can lose a node again.
func (r *run) healthy(what string) error {
	r.t.Helper()
	var out string
	var err error
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		if out, err = r.live().CLI(r.ctx, "cluster", "health"); err == nil {
			return nil
		}
	}
	return fmt.Errorf("after %s the cluster did not recover within 2 minutes: %v\n%s", what, err, out)
}

// inject applies a fault, holds it, heals it and waits for recovery.
func (r *run) inject(f Fault) error {
	t := r.t
	fields := map[string]any{"kind": f.Kind, "hold": f.Hold.Seconds(), "upstream": f.Upstream}
	switch f.Kind {
	case KillLeader, KillFollower, KillMetaLeader:
		n := r.roleNode(f.Upstream, f.Kind)
		fields["node"] = n + 1
		r.hist.add("fault", fields)
		r.nodes[n].Kill()
		time.Sleep(f.Hold)
		if err := r.restart(n); err != nil {
			return err
		}
	case Pause:
		n := r.roleNode(f.Upstream, KillLeader)
		fields["node"] = n + 1
		r.hist.add("fault", fields)
		r.nodes[n].Signal(syscall.SIGSTOP)
		time.Sleep(f.Hold)
		r.nodes[n].Signal(syscall.SIGCONT)
	case MasterFailover:
		fields["from"] = r.masters[f.Upstream].server().Addr()
		r.hist.add("fault", fields)
		r.failover(f.Upstream)
		fields["to"] = r.masters[f.Upstream].server().Addr()
	case MasterRestart:
		m := r.masters[f.Upstream]
		r.hist.add("fault", fields)
		myDone := make(chan error, 1)
		go func() { myDone <- r.my.master.Restart(r.ctx, f.Hold) }()
		m.mu.Lock()
		if err := m.srv.Stop(); err != nil {
			t.Errorf("stop master %s: %v", m.name, err)
		}
		time.Sleep(f.Hold)
		srv, err := mariadbtest.Start(r.ctx, m.dir, m.opt)
		if err != nil {
			m.mu.Unlock()
			t.Fatalf("restart master %s: %v", m.name, err)
		}
		m.srv = srv
		m.mu.Unlock()
		if err := <-myDone; err != nil {
			return fmt.Errorf("restart master %s: %w", r.my.name, err)
		}
	case DiskFull:
		fields["node"] = r.diskNode + 1
		r.hist.add("fault", fields)
		path := filepath.Join(r.dir, "filler")
		if free := mustFree(t, r.dir); free > r.reserve {
			if err := mariadbtest.Fill(path, int64(free-r.reserve+diskUnder)); err != nil {
				t.Fatal(err)
			}
		}
		// The node must say so (and so stop its replicas) while the disk is short.
		suspended := false
		for until := time.Now().Add(max(f.Hold, 5*time.Second)); time.Now().Before(until); time.Sleep(250 * time.Millisecond) {
			out, _ := r.live().CLI(r.ctx, "node", "list", "-o", "json")
			suspended = suspended || strings.Contains(out, "below min_free_disk")
		}
		if !suspended {
			t.Errorf("disk-full: node %d never reported its disk short of space", r.diskNode+1)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	case Partition, OneWay, Flap:
		n := r.roleNode(f.Upstream, KillLeader)
		fields["node"], fields["reset"] = n+1, f.Reset
		r.hist.add("fault", fields)
		switch f.Kind {
		case OneWay:
			r.raftProxy[n].cutAll()
			time.Sleep(f.Hold)
			r.raftProxy[n].heal(f.Reset)
		case Partition:
			r.isolate(n)
			time.Sleep(f.Hold)
			r.rejoin(n, f.Reset)
		case Flap:
			for until := time.Now().Add(f.Hold); time.Now().Before(until); {
				r.isolate(n)
				time.Sleep(f.Period)
				r.rejoin(n, f.Reset)
				time.Sleep(f.Period)
			}
		}
	case SlowDisk:
		n := r.slowNode
		fields["node"], fields["delay"] = n+1, f.Period.Seconds()
		r.hist.add("fault", fields)
		knob := r.faultFile(n, "fsync-delay")
		if err := os.WriteFile(knob, []byte(f.Period.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(f.Hold)
		if err := os.Remove(knob); err != nil {
			t.Fatal(err)
		}
	case PowerCut:
		n := r.slowNode
		r.nodes[n].Signal(syscall.SIGSTOP) // from here nothing reaches the disk
		r.nodes[n].Kill()
		lost, err := faultfs.PowerCut(r.faultFile(n, "journal"))
		if err != nil {
			t.Fatal(err)
		}
		fields["node"], fields["lost_bytes"] = n+1, lost
		r.hist.add("fault", fields)
		time.Sleep(f.Hold)
		if err := r.restart(n); err != nil {
			return err
		}
	case MasterLink:
		fields["reset"] = f.Reset
		r.hist.add("fault", fields)
		r.masterProxy[f.Upstream].cutAll()
		r.my.proxy.cutAll()
		time.Sleep(f.Hold)
		r.masterProxy[f.Upstream].heal(f.Reset)
		r.my.proxy.heal(f.Reset)
	case MoveReplica:
		rp := r.replicas[f.Upstream][f.Replica]
		to := (rp.via + 1) % len(r.nodes)
		fields["from"], fields["to"] = rp.via+1, to+1
		from, myTo := r.my.move(len(r.nodes))
		fields["mysql_from"], fields["mysql_to"] = from+1, myTo+1
		r.hist.add("fault", fields)
		r.point(rp, to)
	}
	r.hist.add("healed", map[string]any{"kind": f.Kind})
	return r.healthy(string(f.Kind))
}

// faultFile is node n's fault-injection file of a kind: "fsync-delay"
// (faultfs.EnvDelayFile) or "journal" (faultfs.EnvJournalFile).
func (r *run) faultFile(n int, kind string) string {
	return filepath.Join(r.dir, fmt.Sprintf("%s-node%d", kind, n+1))
}

// isolate cuts node n off: nothing reaches its raft or admin port, and what it
// sends to the other nodes' raft ports stalls; rejoin heals that.
func (r *run) isolate(n int) {
	r.cut[n] = true
	r.raftProxy[n].cutAll()
	r.adminProxy[n].cutAll()
	for j, p := range r.raftProxy {
		if j != n {
			p.cutFrom(r.nodes[n].RaftAddr)
		}
	}
}

func (r *run) rejoin(n int, reset bool) {
	for _, p := range r.raftProxy {
		p.heal(reset)
	}
	r.adminProxy[n].heal(reset)
	delete(r.cut, n)
}

// proxied puts proxies at a node's raft and admin addresses (the node binds
// others); the raft proxies tag connections by the peers' raft addresses.
func (r *run) proxied(n *flotillatest.Node) {
	t := r.t
	rp, err := newProxy(n.RaftAddr)
	if err != nil {
		t.Fatal(err)
	}
	ap, err := newProxy(n.AdminAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rp.close(); ap.close() })
	n.RaftListen, n.RaftAddr = n.RaftAddr, rp.Addr
	n.AdminListen, n.AdminAddr = n.AdminAddr, ap.Addr
	r.raftProxy = append(r.raftProxy, rp)
	r.adminProxy = append(r.adminProxy, ap)
	var tags []string
	for _, p := range r.raftProxy {
		tags = append(tags, p.Addr)
	}
	for _, p := range r.raftProxy {
		p.setTags(tags...)
	}
}

// point (re)points a replica at node n, keeping its position.
func (r *run) point(rp *replica, n int) {
	t := r.t
	mode := "MASTER_USE_GTID=slave_pos"
	if err := rp.srv.Exec(r.ctx, "STOP SLAVE"); err != nil {
		t.Fatal(err)
	}
	if !rp.gtid {
		// Flotilla's coordinates are the same on every node: a moved replica keeps
		// its position (a new one starts at the first file).
		mode = "MASTER_USE_GTID=no, MASTER_LOG_FILE='flotilla-bin.000001', MASTER_LOG_POS=4"
		if st, err := rp.srv.SlaveStatus(r.ctx); err == nil && st["Relay_Master_Log_File"] != "" {
			mode = fmt.Sprintf("MASTER_USE_GTID=no, MASTER_LOG_FILE='%s', MASTER_LOG_POS=%s", st["Relay_Master_Log_File"], st["Exec_Master_Log_Pos"])
		}
	}
	q := fmt.Sprintf("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER='%s', MASTER_PASSWORD='%s', MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1, %s",
		r.nodes[n].MySQLPort(), rp.user, replicaPass, mode)
	if err := rp.srv.Exec(r.ctx, q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	if err := rp.srv.Exec(r.ctx, "START SLAVE"); err != nil {
		t.Fatal(err)
	}
	rp.via = n
}

func mustFree(t *testing.T, dir string) uint64 {
	t.Helper()
	free, err := mariadbtest.FreeBytes(dir)
	if err != nil {
		t.Fatal(err)
	}
	return free
}

// TestChaos runs the nemesis for FLOTILLA_CHAOS_DURATION (default 75 s, the short
// form `make test` runs; `make chaos` runs 30 minutes) with FLOTILLA_CHAOS_SEED (default:
// the clock), then the checker.
func TestChaos(t *testing.T) {
	mariadbtest.RequireTools(t)
	d := 75 * time.Second
	if v := os.Getenv("FLOTILLA_CHAOS_DURATION"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("FLOTILLA_CHAOS_DURATION: %v", err)
		}
	}
	seed := time.Now().UnixNano()
	if v := os.Getenv("FLOTILLA_CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("FLOTILLA_CHAOS_SEED: %v", err)
		}
	}
	perKind := max(2, int(d/(time.Duration(len(Kinds()))*25*time.Second)))
	const upstreams = 3 // the last one semi-sync, with a standby for master-failover
	schedule := Schedule(seed, d, perKind, upstreams, 2)
	t.Logf("CHAOS seed %d: %d faults over %s (replay: FLOTILLA_CHAOS_SEED=%d)", seed, len(schedule), d, seed)
	ctx, cancel := context.WithTimeout(context.Background(), d+15*time.Minute)
	defer cancel()
	out, err := os.MkdirTemp("", fmt.Sprintf("flotilla-chaos-%d-", seed))
	if err != nil {
		t.Fatal(err)
	}
	// The history and the served files read stay for a failed run, or with
	// FLOTILLA_CHAOS_KEEP=1 (make chaos).
	t.Cleanup(func() {
		if !t.Failed() && os.Getenv("FLOTILLA_CHAOS_KEEP") == "" {
			os.RemoveAll(out)
		}
	})
	dir := t.TempDir()
	start := time.Now()
	hist, err := newHistory(filepath.Join(out, "history.jsonl"), start)
	if err != nil {
		t.Fatal(err)
	}
	defer hist.close()
	r := &run{t: t, ctx: ctx, dir: dir, hist: hist, diskNode: int(seed%3+3) % 3, cut: map[int]bool{}}
	r.slowNode = (r.diskNode + 1) % 3
	// The servers first: what they take of the disk is not the nemesis's.
	for i := range upstreams {
		m := &master{name: fmt.Sprintf("up%d", i), index: i, dir: filepath.Join(dir, fmt.Sprintf("master%d", i)), semi: i == upstreams-1,
			opt: mariadbtest.Options{ServerID: uint32(i + 1), DomainID: uint32(i + 1), LogBin: true, MaxBinlogSize: 64 << 10}}

		port, err := mariadbtest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		m.opt.Port = port
		if m.srv, err = mariadbtest.Start(ctx, m.dir, m.opt); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.server().Stop() })
		mp, err := newProxy(m.srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mp.close() })
		r.masterProxy = append(r.masterProxy, mp)
		if err := m.srv.CreateReplUser(ctx, upstreamUser, upstreamPass); err != nil {
			t.Fatal(err)
		}
		qs := []string{"CREATE DATABASE chaos", "CREATE TABLE chaos.t (id INT PRIMARY KEY, payload TEXT)"}
		if m.semi {
			qs = append(qs, semiSyncOn)
		}
		for _, q := range qs {
			if err := m.srv.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		if m.semi {
			m.opt.ExtraArgs = semiSyncArgs() // from the first restart on: the set-up above must not wait
		}
		r.masters = append(r.masters, m)
		var reps []*replica
		for k := range 2 {
			extra := []string{"--gtid-strict-mode=1"}
			if k == 1 {
				extra = append(extra, "--slave-parallel-threads=4", "--slave-parallel-mode=optimistic")
			}
			if k == 0 && m.semi {
				extra = append(extra, "--rpl-semi-sync-slave-enabled=ON") // a semi-sync replica of Flotilla
			}
			srv, err := mariadbtest.Start(ctx, filepath.Join(dir, fmt.Sprintf("%s-replica%d", m.name, k)),
				mariadbtest.Options{ServerID: uint32(100 + 10*i + k), ExtraArgs: extra})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { srv.Stop() })
			reps = append(reps, &replica{srv: srv, user: "r" + m.name, gtid: k == 0, via: (i + k) % 3})
		}
		r.replicas = append(r.replicas, reps)
	}
	r.my = r.startMySQLUpstream()
	free := mustFree(t, dir)
	// What the run writes grows with its length: 30 minutes took 2.2 GiB in
	// 22 (masters, replicas and nodes together), and a margin too small leaves the
	// node short of space for good.
	// At least a third of what is free too (up to 16 GiB): other suites may
	// share the filesystem (make test runs this one beside the unit tests), and
	// the fault fills with fallocate where it can, so a larger margin costs nothing
	// on a disk (on tmpfs it takes memory: hence the cap).
	margin := max(uint64(2<<30)+uint64(d/time.Minute+1)*(200<<20), min(free/3, 16<<30))
	if free < 2*margin {
		t.Fatalf("the disk-full fault needs %d MiB free in %s, it has %d MiB", 2*margin>>20, dir, free>>20)
	}
	r.reserve = free - margin
	r.nodes = flotillatest.StartClusterWith(ctx, t, filepath.Join(dir, "flotilla"), 3, func(n *flotillatest.Node) {
		r.proxied(n)
		if int(n.ID)-1 == r.slowNode {
			n.Env = []string{faultfs.EnvDelayFile + "=" + r.faultFile(r.slowNode, "fsync-delay"), faultfs.EnvJournalFile + "=" + r.faultFile(r.slowNode, "journal")}
		}
		if int(n.ID)-1 == r.diskNode {
			n.Args = []string{"--min-free-disk", fmt.Sprint(r.reserve)}
		}
	})
	for i, m := range r.masters {
		if o, err := r.nodes[i].CLI(ctx, "upstream", "add", m.name, "--source", r.masterProxy[i].Addr, "--user", upstreamUser, "--password", upstreamPass,
			"--replica-user", "r"+m.name, "--replica-password", replicaPass, "--serve-from", "any"); err != nil {
			t.Fatalf("upstream add %s: %v\n%s", m.name, err, o)
		}
		for _, rp := range r.replicas[i] {
			r.point(rp, rp.via)
		}
		if m.semi {
			r.startStandby(m, (i+2)%3)
		}
	}
	my := r.my
	if o, err := r.nodes[0].CLI(ctx, "upstream", "add", my.name, "--source", my.proxy.Addr, "--user", my.master.User, "--password", my.master.Password,
		"--replica-user", "r"+my.name, "--replica-password", replicaPass, "--serve-from", "any"); err != nil {
		t.Fatalf("upstream add %s: %v\n%s", my.name, err, o)
	}
	if err := r.healthy("start"); err != nil {
		t.Fatal(err)
	}
	if r.nodes[r.slowNode].LogGrep("storage fault injection is on") == "" {
		t.Fatalf("node %d did not take its fault-injection knobs", r.slowNode+1)
	}

	wctx, stopWriters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, m := range r.masters {
		wg.Add(1)
		go func() { defer wg.Done(); m.write(wctx, hist) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); my.write(wctx, hist) }()
	rctx, stopRead := context.WithCancel(ctx)
	my.stopRead, my.readDone = stopRead, make(chan struct{})
	go my.read(rctx, r)
	defer func() { stopRead(); <-my.readDone }()
	soak := startSoak(ctx, r.nodes, 5*time.Second)
	for _, f := range schedule {
		if wait := f.At - time.Since(start); wait > 0 {
			time.Sleep(wait)
		}
		t.Logf("CHAOS %s", f)
		if err := r.inject(f); err != nil {
			r.violation(err.Error() + " (the run stops injecting)")
			break
		}
	}
	stopWriters()
	wg.Wait()
	soak.stop()

	checked, violations := r.check(out)
	violations = append(r.found, violations...)
	// Ingest is pipelined (several proposals of a syncer in raft at once): the run
	// must have exercised that, or it proved nothing of it.
	overlapped := 0
	for _, n := range r.nodes {
		for _, m := range overlappedRe.FindAllStringSubmatch(n.LogGrep("binlog stream from master closed"), -1) {
			k, _ := strconv.Atoi(m[1])
			overlapped += k
		}
	}
	t.Logf("CHAOS proposals made while another of their syncer was in raft (streams that closed cleanly): %d", overlapped)
	if overlapped == 0 {
		violations = append(violations, "no syncer ever had two proposals in flight: the run did not exercise pipelined ingest")
	}
	if d >= 10*time.Minute {
		violations = append(violations, soak.rising()...)
	}
	t.Log("\n" + hist.summary(seed, filepath.Join(out, "history.jsonl"), checked, violations))
	if len(violations) > 0 {
		for _, n := range r.nodes { // the nodes' logs stay with the history
			if b, err := os.ReadFile(filepath.Join(n.Dir, "flotilla.log")); err == nil {
				os.WriteFile(filepath.Join(out, fmt.Sprintf("node%d.log", n.ID)), b, 0o644)
			}
		}
		t.Fatalf("%d violations (seed %d)", len(violations), seed)
	}
}

// overlappedRe reads a syncer's count of proposals made with another in flight from
// the line it logs when its stream closes.
var overlappedRe = regexp.MustCompile(`overlapped=(\d+)`)

// check is the independent checker: the replicas against their masters, the group
// members' served files against each other, the nodes' logs.
func (r *run) check(out string) (map[string]int, []string) {
	t, ctx := r.t, r.ctx
	var violations []string
	checked := map[string]int{}
	for i, m := range r.masters {
		srv := m.server()
		if m.semi {
			// A commit the stopped writer left waiting for Flotilla's acknowledgement
			// is in the binary log (AFTER_SYNC) and so on the replicas, but shows in
			// the master's table only once acknowledged.
			if err := semiSyncSettled(ctx, srv); err != nil {
				violations = append(violations, fmt.Sprintf("%s: %v", m.name, err))
			}
		}
		want, err := srv.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
		if err != nil {
			t.Fatal(err)
		}
		rows, err := srv.Query(ctx, "SELECT id, MD5(payload) FROM chaos.t ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, row := range rows {
			have[row[0]] = true
		}
		m.mu.Lock()
		for _, id := range m.acked {
			if !have[strconv.Itoa(id)] {
				violations = append(violations, fmt.Sprintf("%s: the master acknowledged id %d but does not hold it", m.name, id))
			}
		}
		checked[m.name] = len(m.acked)
		m.mu.Unlock()
		if m.semi {
			// Every acknowledgement waited for Flotilla's quorum: none went asynchronous.
			if rows, err := srv.Query(ctx, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_no_tx'"); err != nil || len(rows) != 1 || rows[0][1] != "0" {
				violations = append(violations, fmt.Sprintf("%s: the master committed without Flotilla's semi-sync acknowledgement: %v %v", m.name, rows, err))
			}
		}
		reps := r.replicas[i]
		if m.standby != nil {
			reps = append(reps[:len(reps):len(reps)], m.standby)
		}
		for k, rp := range reps {
			name := fmt.Sprintf("%s replica %d (%s via node %d)", m.name, k, map[bool]string{true: "GTID", false: "file/position"}[rp.gtid], rp.via+1)
			if rp == m.standby {
				name = fmt.Sprintf("%s standby (via node %d)", m.name, rp.via+1)
			}
			if err := caughtUp(ctx, rp.srv, want); err != nil {
				st, _ := rp.srv.SlaveStatus(ctx)
				violations = append(violations, fmt.Sprintf("%s did not reach the master's GTID %s: IO %s SQL %s, errors %q %q", name, want,
					st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Last_IO_Error"], st["Last_SQL_Error"]))
				continue
			}
			got, err := rp.srv.Query(ctx, "SELECT id, MD5(payload) FROM chaos.t ORDER BY id")
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(rows) {
				violations = append(violations, fmt.Sprintf("%s holds %d rows, the master %d", name, len(got), len(rows)))
				continue
			}
			for j := range rows {
				if !slices.Equal(rows[j], got[j]) {
					violations = append(violations, fmt.Sprintf("%s row %d: %v, the master %v", name, j, got[j], rows[j]))
					break
				}
			}
		}
		violations = append(violations, r.checkMembers(m.name, want)...)
		violations = append(violations, r.checkServedFiles(out, m.name, r.fetchMariaDBFiles(m.name), r.checkMariaDBFile)...)
	}
	n, v := r.my.check(r, out)
	checked[r.my.name] = n
	violations = append(violations, v...)
	for _, n := range r.nodes {
		if l := n.LogGrep("panic:", "fatal error:"); l != "" {
			violations = append(violations, fmt.Sprintf("node %d logged a crash: %s", n.ID, strings.SplitN(l, "\n", 2)[0]))
		}
	}
	return checked, violations
}

// checkMembers requires every member of the upstream's group to hold each of the
// master's transactions exactly once: its GTID position is the master's, and its
// transaction count the master's sequence number (one domain, one server: a
// duplicate or a loss changes the count even where replicas would skip it).
func (r *run) checkMembers(name, want string) []string {
	seq, _ := strconv.Atoi(want[strings.LastIndex(want, "-")+1:])
	var last string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		out, err := r.live().CLI(r.ctx, "upstream", "get", name, "-o", "json")
		var u struct {
			Group struct {
				MemberStatus []struct {
					Node         string `json:"node"`
					Transactions string `json:"transactions"`
					ExecutedGtid string `json:"executedGtid"`
					Reachable    bool   `json:"reachable"`
				} `json:"memberStatus"`
			} `json:"group"`
		}
		if err != nil || json.Unmarshal([]byte(out), &u) != nil {
			last = fmt.Sprint(err)
			continue
		}
		agree := len(u.Group.MemberStatus) == 3
		last = ""
		for _, ms := range u.Group.MemberStatus {
			if !ms.Reachable || ms.ExecutedGtid != want || ms.Transactions != strconv.Itoa(seq) {
				agree = false
				last += fmt.Sprintf(" node %s holds %s transactions up to %s;", ms.Node, ms.Transactions, ms.ExecutedGtid)
			}
		}
		if agree {
			return nil
		}
	}
	return []string{fmt.Sprintf("%s: members disagree with the master's %d transactions (%s):%s", name, seq, want, last)}
}

// checkServedFiles reads the upstream's served files from every member (each serves
// its own replica: --serve-from any) into a directory each (fetch), compares them
// up to the shortest and checks each with decode.
func (r *run) checkServedFiles(out, name string, fetch func(node int, dst string) error, decode func(path string) error) []string {
	var violations []string
	st := r.status()
	var members []int
	for _, s := range st.Upstreams {
		if s.Upstream.Name == name {
			for _, m := range s.Group.Members {
				id, _ := strconv.Atoi(m)
				members = append(members, id-1)
			}
		}
	}
	files := map[string]map[int][]byte{}
	for _, n := range members {
		dst := filepath.Join(out, fmt.Sprintf("%s-node%d", name, n+1))
		os.MkdirAll(dst, 0o755)
		if err := fetch(n, dst); err != nil {
			violations = append(violations, fmt.Sprintf("%s: reading node %d's served files: %v", name, n+1, err))
			continue
		}
		ents, _ := os.ReadDir(dst)
		if len(ents) == 0 {
			violations = append(violations, fmt.Sprintf("%s: node %d served no files", name, n+1))
		}
		for _, e := range ents {
			b, _ := os.ReadFile(filepath.Join(dst, e.Name()))
			if files[e.Name()] == nil {
				files[e.Name()] = map[int][]byte{}
			}
			files[e.Name()][n] = b
			if err := decode(filepath.Join(dst, e.Name())); err != nil {
				violations = append(violations, fmt.Sprintf("%s: node %d's %s: %v", name, n+1, e.Name(), err))
			}
		}
	}
	for file, by := range files {
		var ref []byte
		refNode := -1
		for n, b := range by {
			if refNode < 0 {
				ref, refNode = b, n
				continue
			}
			l := min(len(ref), len(b))
			if !bytes.Equal(ref[:l], b[:l]) {
				violations = append(violations, fmt.Sprintf("%s: %s differs between nodes %d and %d within their first %d bytes", name, file, refNode+1, n+1, l))
			}
		}
	}
	return violations
}

// fetchMariaDBFiles copies upstream name's served files from a node with
// mariadb-binlog --raw.
func (r *run) fetchMariaDBFiles(name string) func(int, string) error {
	return func(n int, dst string) error {
		cmd := exec.CommandContext(r.ctx, "mariadb-binlog", "--read-from-remote-server", "--raw", "--host=127.0.0.1", "--port="+r.nodes[n].MySQLPort(),
			"--user=r"+name, "--password="+replicaPass, "--to-last-log", "--result-file="+dst+"/", "flotilla-bin.000001")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%w: %s", err, bytes.TrimSpace(b))
		}
		return nil
	}
}

// checkMariaDBFile decodes a served file with mariadb-binlog and requires every
// transaction in it to be whole.
func (r *run) checkMariaDBFile(path string) error {
	o, err := exec.CommandContext(r.ctx, "mariadb-binlog", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("does not decode: %w: %s", err, tail(string(o)))
	}
	if bad := incompleteTxns(string(o)); len(bad) > 0 {
		return fmt.Errorf("holds transactions without their commit: %v", bad)
	}
	return nil
}

func tail(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// incompleteTxns lists the transactional GTIDs of a decoded binlog file (mariadb-binlog
// output) that are not followed by their commit (Xid or COMMIT) before the next
// GTID or the file's end: a binlog file never splits a transaction.
func incompleteTxns(decoded string) []string {
	var bad []string
	open := ""
	for _, l := range strings.Split(decoded, "\n") {
		if !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "COMMIT") {
			continue
		}
		if strings.HasPrefix(l, "COMMIT") || strings.Contains(l, "Xid = ") {
			open = ""
			continue
		}
		f := strings.Fields(l)
		for j := range f {
			if f[j] == "GTID" && j+2 < len(f) {
				if open != "" {
					bad = append(bad, open)
				}
				open = ""
				if f[j+2] == "trans" {
					open = f[j+1]
				}
				break
			}
		}
	}
	if open != "" {
		bad = append(bad, open)
	}
	return bad
}

// caughtUp waits up to 2 minutes for a replica to reach the master's GTID position,
// and stops waiting at once when a replication thread stopped with an error.
func caughtUp(ctx context.Context, srv *mariadbtest.Server, want string) error {
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if got, err := srv.QueryValue(ctx, "SELECT @@gtid_slave_pos"); err == nil && got == want {
			return nil
		}
		if st, err := srv.SlaveStatus(ctx); err == nil && (st["Last_SQL_Errno"] != "0" || st["Last_IO_Errno"] != "0" && st["Slave_IO_Running"] == "No") {
			return fmt.Errorf("replication stopped: SQL %q, IO %q", st["Last_SQL_Error"], st["Last_IO_Error"])
		}
	}
	return fmt.Errorf("not within 2 minutes")
}
