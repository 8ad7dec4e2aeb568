package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mysqlmaster"
)

// TestMasterBendsRules: a MySQL-compatible master that refuses SHOW GRANTS to the
// replication user and sends no heartbeats. It is added with a warning (shown by add
// and by get) and relays; after four probes of silence the stream is still the same
// connection (no reconnect), and the next write reaches a replica within a second.
// When the stream then stalls (the master writes, the link brings nothing), the
// probes end it and the write arrives over a new one.
func TestMasterBendsRules(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	master := mysqlmaster.Start(t, "../fixtures/mysql-binlog/binlog")
	master.SetQuirks(mysqlmaster.Quirks{RefuseShowGrants: true, NoHeartbeats: true})
	uuid := mysqlmaster.FixtureUUID
	recorded := recordedTxns(t, master)

	// Probes every 3 s instead of 15: the same verdicts, a fifth of the wait.
	fl := flotillatest.NewNode(t, filepath.Join(t.TempDir(), "flotilla"), 1)
	fl.Args = []string{"--master-silence-probe", "3s"}
	fl.Start(ctx)
	out, err := fl.CLI(ctx, "upstream", "add", "bent", "--source", master.Addr(), "--user", master.User, "--password", master.Password,
		"--replica-user", replicaUser, "--replica-password", replicaPass)
	if err != nil {
		t.Fatalf("a master that refuses SHOW GRANTS must be added with a warning: %v", err)
	}
	if !strings.Contains(out, "WARNING") || !strings.Contains(out, "SHOW GRANTS") {
		t.Fatalf("upstream add does not warn that SHOW GRANTS could not run:\n%s", out)
	}
	u := getUpstream(ctx, t, fl, "bent")
	if len(u.Upstream.AddWarnings) != 1 || !strings.Contains(u.Upstream.AddWarnings[0], "REPLICATION SLAVE") {
		t.Fatalf("upstream get shows the add warnings %q, want the SHOW GRANTS one", u.Upstream.AddWarnings)
	}
	if table, err := fl.CLI(ctx, "upstream", "get", "bent"); err != nil || !strings.Contains(table, "SHOW GRANTS") {
		t.Fatalf("upstream get's table does not show the warning (%v):\n%s", err, table)
	}

	all := mysqlSet(t, uuid+":1-309")
	waitMySQLHolds(ctx, t, fl, "bent", all)
	r := startMySQLReplica(t, fl, binlog.MySQLSet{})
	r.until(ctx, all)
	checkRecorded(t, r, recorded, 0)
	before := getUpstream(ctx, t, fl, "bent").Group
	if !before.Connected {
		t.Fatalf("the syncer is not connected: %+v", before)
	}

	// Four probes' time without a byte from the master: they find it holds nothing
	// the group lacks, and the stream stays.
	select {
	case <-time.After(13 * time.Second):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	after := getUpstream(ctx, t, fl, "bent").Group
	if after.Reconnects != before.Reconnects || !after.Connected {
		t.Fatalf("a silent, healthy master was reconnected to: reconnects %s -> %s, connected %v\n%s",
			before.Reconnects, after.Reconnects, after.Connected, fl.LogTail(20))
	}
	if !strings.Contains(fl.LogTail(200), "the master's stream is silent") {
		t.Fatalf("the probes did not run (no silence logged):\n%s", fl.LogTail(40))
	}
	began := time.Now()
	g, err := master.AppendTxn(recorded[uuid+":300"])
	if err != nil {
		t.Fatal(err)
	}
	r.until(ctx, mysqlSet(t, g.String()))
	if lag := time.Since(began); lag > time.Second {
		t.Fatalf("after four probes of silence a write took %v to reach the replica, want < 1s", lag)
	}
	if final := getUpstream(ctx, t, fl, "bent").Group; final.Reconnects != before.Reconnects {
		t.Fatalf("reconnects %s -> %s", before.Reconnects, final.Reconnects)
	}

	// The link dies without a reset: the master goes on writing, the stream brings
	// nothing. Two probes find the master ahead of the group; the stream is
	// reconnected and the write arrives.
	master.StallStreams()
	g2, err := master.AppendTxn(recorded[uuid+":301"])
	if err != nil {
		t.Fatal(err)
	}
	r.until(ctx, mysqlSet(t, g2.String()))
	if final := getUpstream(ctx, t, fl, "bent").Group; final.Reconnects == before.Reconnects {
		t.Fatalf("a stalled stream delivered a write without a reconnect?\n%s", fl.LogTail(20))
	}
	if !strings.Contains(fl.LogTail(200), "the link is stalled") {
		t.Fatalf("the stall was not the reason of the reconnect:\n%s", fl.LogTail(30))
	}
}
