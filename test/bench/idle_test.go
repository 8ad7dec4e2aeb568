package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/adminrpc"
	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// rssBytes is a process's resident set size, less what it freed lazily.
func rssBytes(b *testing.B, pid int) float64 {
	b.Helper()
	n, err := mariadbtest.Memory(pid, "VmRSS")
	if err != nil {
		b.Fatal(err)
	}
	// Pages the process freed lazily (MADV_FREE: a node's heap it gave back, and its
	// pretouched memory until the heap uses it) count in RSS until the kernel takes
	// them, which it does whenever it needs memory: they are not the groups'.
	lazy, err := lazyFreeBytes(pid)
	if err != nil {
		b.Fatal(err)
	}
	return float64(n - lazy)
}

// lazyFreeBytes is the LazyFree of a process's smaps_rollup.
func lazyFreeBytes(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "LazyFree:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no LazyFree in /proc/%d/smaps_rollup", pid)
}

// quiet waits until every group has all its members and the placement controller
// has made no decision for 10 s: spreading a thousand new groups' leaderships takes
// the controller a while, and its moves are not idling.
func quiet(ctx context.Context, b *testing.B, n *flotillatest.Node, groups, size int) time.Duration {
	b.Helper()
	start := time.Now()
	replicas := min(size, 3) // each group's replicas: the default 3, or every node if fewer
	last, since, state := "", time.Time{}, "status not read yet"
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		st, err := readStatus(ctx, n)
		if err != nil {
			state = err.Error()
			continue
		}
		complete := st.complete(replicas)
		// The clock starts at the first poll that reads the status: 10 s of polls
		// seen, not 10 s since the call.
		if d := strings.Join(st.Decisions, "\n"); since.IsZero() || d != last || complete != groups {
			last, since = d, time.Now()
		}
		state = fmt.Sprintf("%d of %d groups with their %d members; last decision: %q", complete, groups, replicas, st.Decisions[max(0, len(st.Decisions)-1):])
		if time.Since(since) >= 10*time.Second {
			return since.Sub(start)
		}
	}
	b.Fatalf("the cluster did not settle within 5 minutes (every group with its members, no placement decision for 10 s): %s", state)
	return 0
}

// BenchmarkIdleGroups measures what an idle upstream costs a node: a one-node cluster
// relays FLOTILLA_IDLE_GROUPS (default 1000) upstreams of one real MariaDB master (each
// group has its own syncer connection, server_id and raft group), then idles. It
// reports the node's RSS and CPU per group, and the time to add them; the baseline is
// what the same connections cost the master (its RSS and CPU per binlog dump thread).
// FLOTILLA_IDLE_NODES=3 runs a 3-node cluster instead, each group replicated on every
// node (as deployed), and reports what all the nodes together spend per group: the
// leaders' heartbeats to their followers then count too.
func BenchmarkIdleGroups(b *testing.B) {
	mariadbtest.RequireTools(b)
	groups := envCount("FLOTILLA_IDLE_GROUPS", 1000)
	size := envCount("FLOTILLA_IDLE_NODES", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	dir := b.TempDir()
	m, err := mariadbtest.Start(ctx, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1, LogBin: true,
		ExtraArgs: []string{fmt.Sprintf("--max-connections=%d", groups+200), "--thread-cache-size=0"}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Stop() })
	if err := m.CreateReplUser(ctx, benchUser, benchPass); err != nil {
		b.Fatal(err)
	}
	// FLOTILLA_BENCH_PROFILE=PREFIX saves the (first) node's CPU profile of the idle
	// window (PREFIX.cpu), of the first 10 s of adding (PREFIX.add.cpu) and its heap
	// after the idle window (PREFIX.heap).
	prof := os.Getenv("FLOTILLA_BENCH_PROFILE")
	metricsAddr := ""        // the first node's
	var metricAddrs []string // every node's: leader changes while idle
	setup := func(n *flotillatest.Node) {
		n.ServeDefaults, n.Args = true, []string{"--log-level", "warn"}
		addr := n.AddMetrics()
		metricAddrs = append(metricAddrs, addr)
		if n.ID == 1 {
			metricsAddr = addr
			if prof != "" {
				n.Args = append(n.Args, "--debug-pprof")
			}
		}
	}
	// leaderChanges sums the leader changes the nodes observed in their groups'
	// raft (each node counts a change it sees, so one change counts up to once per
	// replica).
	leaderChanges := func() (total float64) {
		for _, addr := range metricAddrs {
			sum, err := scrape(ctx, addr)
			if err != nil {
				b.Fatal(err)
			}
			total += sum("flotilla_raft_leader_changes_total")
		}
		return total
	}
	var nodes []*flotillatest.Node
	if size == 1 {
		n := flotillatest.NewNode(b, filepath.Join(dir, "node"), 1)
		setup(n)
		n.Start(ctx)
		nodes = []*flotillatest.Node{n}
	} else {
		nodes = flotillatest.StartClusterWith(ctx, b, filepath.Join(dir, "nodes"), size, setup)
	}
	n := nodes[0]
	// What the nodes together use.
	nodeCPU := func() (s float64) {
		for _, n := range nodes {
			s += cpuSeconds(b, n.PID())
		}
		return s
	}
	nodeRSS := func() (s float64) {
		for _, n := range nodes {
			s += rssBytes(b, n.PID())
		}
		return s
	}
	cl, err := adminrpc.Dial(n.AdminAddr, n.Token, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	// Let start-up work (elections, first heartbeats, the first membership checks) pass.
	settleIdle := func() { time.Sleep(10 * time.Second) }
	settleIdle()
	rss0, mrss0 := nodeRSS(), rssBytes(b, m.PID())

	start := time.Now()
	if prof != "" {
		go saveProfile(ctx, metricsAddr, prof+".add.cpu", 10*time.Second) // the first 10 s of adding
	}
	for i := 0; i < groups; i++ {
		_, err := cl.AddUpstream(ctx, &adminv1.AddUpstreamRequest{Name: fmt.Sprintf("idle%04d", i), Source: m.Addr(), User: benchUser, Password: benchPass,
			ReplicaUsers: []*adminv1.ReplicaUser{{User: fmt.Sprintf("r%04d", i), Password: benchPass}}})
		if err != nil {
			b.Fatalf("add upstream %d: %v", i, err)
		}
	}
	// Every syncer connected to the master.
	for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		v, _ := m.QueryValue(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
		if c, _ := strconv.Atoi(v); c >= groups {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %s of %d syncers connected", v, groups)
		}
	}
	addTime := time.Since(start)
	var settled time.Duration
	if size > 1 {
		settled = quiet(ctx, b, n, groups, size)
	}
	settleIdle()
	const window = 30 * time.Second
	changes0 := leaderChanges()
	cpu0, mcpu0 := nodeCPU(), cpuSeconds(b, m.PID())
	if prof != "" {
		go saveProfile(ctx, metricsAddr, prof+".cpu", window-time.Second)
	}
	time.Sleep(window) // the measurement: what idling costs over a fixed window
	cpu, mcpu := nodeCPU()-cpu0, cpuSeconds(b, m.PID())-mcpu0
	changesAll := leaderChanges()
	changes := changesAll - changes0
	rss, mrss := nodeRSS(), rssBytes(b, m.PID())
	if prof != "" {
		saveURL(ctx, "http://"+metricsAddr+"/debug/pprof/heap", prof+".heap")
	}

	perGroupRSS := (rss - rss0) / float64(groups) / (1 << 20)
	masterRSS := (mrss - mrss0) / float64(groups) / (1 << 20)
	perGroupCPU := 100 * cpu / window.Seconds() / float64(groups)
	masterCPU := 100 * mcpu / window.Seconds() / float64(groups)
	rep := &relayReport{}
	// One node's report keeps the names of the rows; a cluster's says so.
	groupsLabel, cpuLabel, who, name := fmt.Sprintf("%d groups", groups), "idle CPU per group", "the node", "idle"
	if size > 1 {
		groupsLabel = fmt.Sprintf("%d groups, %d nodes", groups, size)
		cpuLabel = fmt.Sprintf("idle CPU per group (%d nodes)", size)
		who, name = fmt.Sprintf("the %d nodes together", size), fmt.Sprintf("idle%dn", size)
	}
	rep.add(fmt.Sprintf("idle RSS per group (%s)", groupsLabel), perGroupRSS, masterRSS, "MiB", 0, false)
	rep.add(cpuLabel, perGroupCPU, masterCPU, "%core", 0, false)
	rep.note(fmt.Sprintf("idle CPU per group: %.4f%% of a core (%s %.1f%% for %d groups, over %s)", perGroupCPU, who, 100*cpu/window.Seconds(), groups, window))
	if size > 1 {
		rep.note(fmt.Sprintf("the cluster settled %s after the last syncer connected: every group with its members, and the placement controller's last decision (spreading the leaderships) made then", settled.Round(time.Second)))
	}
	rep.note(fmt.Sprintf("leader changes observed while idle: %.0f, of %.0f since the nodes started (summed over the nodes' groups; each change counts once per replica that sees it)", changes, changesAll))
	rep.note(fmt.Sprintf("idle groups: %d groups added in %s (%.0f ms each, until every syncer was connected); RSS of %s %.0f MiB -> %.0f MiB; goals ≤ 0.3 MiB and ≤ 0.005%% of a core per group, and 1,000 added in ≤ 10 s; baseline: the master's cost per binlog dump thread",
		groups, addTime.Round(time.Second), float64(addTime.Milliseconds())/float64(groups), who, rss0/(1<<20), rss/(1<<20)))
	rep.write(b, name)
}
