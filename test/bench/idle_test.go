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

// BenchmarkIdleGroups measures what an idle upstream costs a node: a one-node cluster
// relays FLOTILLA_IDLE_GROUPS (default 1000) upstreams of one real MariaDB master (each
// group has its own syncer connection, server_id and raft group), then idles. It
// reports the node's RSS and CPU per group, and the time to add them; the baseline is
// what the same connections cost the master (its RSS and CPU per binlog dump thread).
func BenchmarkIdleGroups(b *testing.B) {
	mariadbtest.RequireTools(b)
	groups := envCount("FLOTILLA_IDLE_GROUPS", 1000)
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
	n := flotillatest.NewNode(b, filepath.Join(dir, "node"), 1)
	n.ServeDefaults, n.Args = true, []string{"--log-level", "warn"}
	// FLOTILLA_BENCH_PROFILE=PREFIX saves the node's CPU profile of the idle window
	// (PREFIX.cpu), of the first 10 s of adding (PREFIX.add.cpu) and its heap after
	// the idle window (PREFIX.heap).
	prof := os.Getenv("FLOTILLA_BENCH_PROFILE")
	metricsAddr := ""
	if prof != "" {
		p, err := mariadbtest.FreePort()
		if err != nil {
			b.Fatal(err)
		}
		metricsAddr = fmt.Sprintf("127.0.0.1:%d", p)
		n.Args = append(n.Args, "--metrics-addr", metricsAddr, "--debug-pprof")
	}
	n.Start(ctx)
	cl, err := adminrpc.Dial(n.AdminAddr, n.Token, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	// Let start-up work (elections, first heartbeats, the first membership checks) pass.
	settleIdle := func() { time.Sleep(10 * time.Second) }
	settleIdle()
	rss0, mrss0 := rssBytes(b, n.PID()), rssBytes(b, m.PID())

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
	settleIdle()
	const window = 30 * time.Second
	cpu0, mcpu0 := cpuSeconds(b, n.PID()), cpuSeconds(b, m.PID())
	if prof != "" {
		go saveProfile(ctx, metricsAddr, prof+".cpu", window-time.Second)
	}
	time.Sleep(window) // the measurement: what idling costs over a fixed window
	cpu, mcpu := cpuSeconds(b, n.PID())-cpu0, cpuSeconds(b, m.PID())-mcpu0
	rss, mrss := rssBytes(b, n.PID()), rssBytes(b, m.PID())
	if prof != "" {
		saveURL(ctx, "http://"+metricsAddr+"/debug/pprof/heap", prof+".heap")
	}

	perGroupRSS := (rss - rss0) / float64(groups) / (1 << 20)
	masterRSS := (mrss - mrss0) / float64(groups) / (1 << 20)
	perGroupCPU := 100 * cpu / window.Seconds() / float64(groups)
	masterCPU := 100 * mcpu / window.Seconds() / float64(groups)
	rep := &relayReport{}
	rep.add(fmt.Sprintf("idle RSS per group (%d groups)", groups), perGroupRSS, masterRSS, "MiB", 0, false)
	rep.add("idle CPU per group", perGroupCPU, masterCPU, "%core", 0, false)
	rep.note(fmt.Sprintf("idle CPU per group: %.4f%% of a core (the node %.1f%% for %d groups, over %s)", perGroupCPU, 100*cpu/window.Seconds(), groups, window))
	rep.note(fmt.Sprintf("idle groups: %d groups added in %s (%.0f ms each, until every syncer was connected); node RSS %.0f MiB -> %.0f MiB; goals ≤ 0.3 MiB and ≤ 0.005%% of a core per group, and 1,000 added in ≤ 10 s; baseline: the master's cost per binlog dump thread",
		groups, addTime.Round(time.Second), float64(addTime.Milliseconds())/float64(groups), rss0/(1<<20), rss/(1<<20)))
	rep.write(b, "idle")
}
