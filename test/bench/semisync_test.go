package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// startSemiMaster starts a MariaDB master with semi-sync on (AFTER_SYNC, a timeout
// long enough never to fall back to asynchronous commits) and a table to write.
func startSemiMaster(ctx context.Context, b *testing.B, dir string, id uint32) *mariadbtest.Server {
	b.Helper()
	m, err := mariadbtest.Start(ctx, dir, mariadbtest.Options{ServerID: id, LogBin: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Stop() })
	if err := m.CreateReplUser(ctx, benchUser, benchPass); err != nil {
		b.Fatal(err)
	}
	for _, q := range []string{"CREATE DATABASE semi", "CREATE TABLE semi.t (id INT PRIMARY KEY, v VARCHAR(100))",
		"SET GLOBAL rpl_semi_sync_master_wait_point=AFTER_SYNC, rpl_semi_sync_master_timeout=600000, rpl_semi_sync_master_enabled=ON"} {
		if err := m.Exec(ctx, q); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
	return m
}

// semiCounter reads one of the master's Rpl_semi_sync_master_* counters.
func semiCounter(ctx context.Context, b *testing.B, m *mariadbtest.Server, name string) int {
	b.Helper()
	v, err := m.QueryValue(ctx, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = ?", "RPL_SEMI_SYNC_MASTER_"+name)
	if err != nil {
		b.Fatal(err)
	}
	n, _ := strconv.Atoi(v)
	return n
}

// commitLatencies times n single-row autocommit INSERTs on m, one after another, after
// checking a semi-sync replica is connected; every one must be acknowledged. It
// starts with nothing left for the kernel to write back (settleDisk), the baseline
// as Flotilla.
func commitLatencies(ctx context.Context, b *testing.B, m *mariadbtest.Server, from, n int) []time.Duration {
	b.Helper()
	settleDisk(b, m.Dir())
	for deadline := time.Now().Add(time.Minute); semiCounter(ctx, b, m, "CLIENTS") != 1; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("no semi-sync replica connected to the master")
		}
	}
	conn, err := m.DB().Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	yes := semiCounter(ctx, b, m, "YES_TX")
	out := make([]time.Duration, 0, n)
	for i := from; i < from+n; i++ {
		t0 := time.Now()
		if _, err := conn.ExecContext(ctx, "INSERT INTO semi.t VALUES (?, REPEAT('x', 100))", i); err != nil {
			b.Fatal(err)
		}
		out = append(out, time.Since(t0))
	}
	if got := semiCounter(ctx, b, m, "YES_TX") - yes; got != n || semiCounter(ctx, b, m, "NO_TX") != 0 {
		b.Fatalf("%d of %d commits were acknowledged by the semi-sync replica (no_tx %d)", got, n, semiCounter(ctx, b, m, "NO_TX"))
	}
	return out
}

// BenchmarkSemiSyncCommitLatency measures the commit latency a MariaDB master with
// semi-sync (AFTER_SYNC) sees with a 3-node Flotilla group as its acknowledging
// replica (ACK after the raft quorum's commit), against a plain MariaDB semi-sync
// replica of another master in the same run: p50 and p99 of FLOTILLA_SEMI_COMMITS
// (default 1000) sequential single-row commits. A third master's replica, which syncs
// its relay log before each ACK, is a reference row (the durability Flotilla gives).
func BenchmarkSemiSyncCommitLatency(b *testing.B) {
	mariadbtest.RequireTools(b)
	n := envCount("FLOTILLA_SEMI_COMMITS", 1000)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir := b.TempDir()
	disk := diskFloor(b, dir) // before any server runs

	// Baseline: a MariaDB replica acknowledging directly.
	base := startSemiMaster(ctx, b, filepath.Join(dir, "base-master"), 1)
	startReplicaOf(ctx, b, filepath.Join(dir, "base-replica"), 2, strconv.Itoa(base.Port()), benchUser, "--rpl-semi-sync-slave-enabled=ON")
	commitLatencies(ctx, b, base, 0, 50) // warm-up
	baseLat := commitLatencies(ctx, b, base, 1000, n)
	// For reference, not the goal's baseline: a replica that makes each event durable
	// in its relay log (sync_relay_log=1) before its ACK, as Flotilla's quorum does.
	durable := startSemiMaster(ctx, b, filepath.Join(dir, "durable-master"), 21)
	startReplicaOf(ctx, b, filepath.Join(dir, "durable-replica"), 22, strconv.Itoa(durable.Port()), benchUser,
		"--rpl-semi-sync-slave-enabled=ON", "--sync-relay-log=1")
	commitLatencies(ctx, b, durable, 0, 50)
	durableLat := commitLatencies(ctx, b, durable, 1000, n)

	// Flotilla: three nodes, ACK after the group's raft commit.
	m := startSemiMaster(ctx, b, filepath.Join(dir, "master"), 11)
	// FLOTILLA_BENCH_TRACE=PREFIX saves each node's execution trace (PREFIX.1 to .3)
	// of 1 s of the timed commits; FLOTILLA_BENCH_PROFILE=PREFIX its CPU profile.
	trace, prof := os.Getenv("FLOTILLA_BENCH_TRACE"), os.Getenv("FLOTILLA_BENCH_PROFILE")
	var debugAddrs []string
	nodes := flotillatest.StartClusterWith(ctx, b, filepath.Join(dir, "flotilla"), 3, func(n *flotillatest.Node) {
		n.ServeDefaults, n.Args = true, []string{"--log-level", "warn"}
		if trace != "" || prof != "" {
			port, err := mariadbtest.FreePort()
			if err != nil {
				b.Fatal(err)
			}
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			debugAddrs = append(debugAddrs, addr)
			n.Args = append(n.Args, "--metrics-addr", addr, "--debug-pprof")
		}
	})
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "main", "--source", m.Addr(), "--user", benchUser, "--password", benchPass,
		"--replica-user", replUser, "--replica-password", benchPass, "--semi-sync", "on"); err != nil {
		b.Fatalf("upstream add: %v\n%s", err, out)
	}
	commitLatencies(ctx, b, m, 0, 50)
	var saves sync.WaitGroup // the nodes stop only once their files are saved
	for i, addr := range debugAddrs {
		if trace != "" {
			saves.Go(func() {
				saveURL(ctx, fmt.Sprintf("http://%s/debug/pprof/trace?seconds=1", addr), fmt.Sprintf("%s.%d", trace, i+1))
			})
		}
		if prof != "" {
			saves.Go(func() { saveProfile(ctx, addr, fmt.Sprintf("%s.%d", prof, i+1), time.Second) })
		}
	}
	flLat := commitLatencies(ctx, b, m, 1000, n)
	saves.Wait()

	rep := &relayReport{disk: disk}
	rep.add("semi-sync commit latency p50", ms(percentile(flLat, 0.50)), ms(percentile(baseLat, 0.50)), "ms", 3, false)
	rep.add("semi-sync commit latency p99", ms(percentile(flLat, 0.99)), ms(percentile(baseLat, 0.99)), "ms", 0, false)
	rep.add("semi-sync p50 against a replica syncing its relay log", ms(percentile(flLat, 0.50)), ms(percentile(durableLat, 0.50)), "ms", 0, false)
	rep.note(fmt.Sprintf("semi-sync: %d sequential single-row commits on a MariaDB master (AFTER_SYNC), all acknowledged; value: Flotilla (3 nodes, ACK after the raft commit) as the semi-sync replica; baseline: a plain MariaDB semi-sync replica, same run, same machine (which writes its relay log without syncing it before its ACK: sync_relay_log=10000, the default); for reference, one with sync_relay_log=1, durable before its ACK as Flotilla's quorum is, answered in p50 %.2f ms, p99 %.2f ms", n,
		ms(percentile(durableLat, 0.50)), ms(percentile(durableLat, 0.99))))
	rep.write(b, "semisync")
}
