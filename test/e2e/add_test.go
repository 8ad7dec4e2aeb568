package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// TestUpstreamAddRefusesBadSources: `upstream add` checks the master and refuses,
// with the reason, when it cannot be relayed; nothing is added then.
func TestUpstreamAddRefusesBadSources(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	noBinlog, err := mariadbtest.Start(ctx, filepath.Join(dir, "nobinlog"), mariadbtest.Options{ServerID: 5})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { noBinlog.Stop() })
	if err := noBinlog.CreateReplUser(ctx, upstreamUser, upstreamPass); err != nil {
		t.Fatal(err)
	}
	fl := flotillatest.StartNode(ctx, t, filepath.Join(dir, "flotilla"))
	closed, _ := mariadbtest.FreePort()
	add := func(source, pass string) error {
		_, err := fl.CLI(ctx, "upstream", "add", "u", "--source", source, "--user", upstreamUser, "--password", pass,
			"--replica-user", replicaUser, "--replica-password", replicaPass)
		return err
	}
	cases := []struct {
		name, source, pass, want string
		setup                    string
	}{
		{"unreachable", fmt.Sprintf("127.0.0.1:%d", closed), upstreamPass, "cannot connect to master", ""},
		{"wrong password", master.Addr(), "wrong", "refused user", ""},
		{"binlog off", noBinlog.Addr(), upstreamPass, "binary logging is off", ""},
		{"statement format", master.Addr(), upstreamPass, "binlog_format=STATEMENT", "SET GLOBAL binlog_format=STATEMENT"},
	}
	for _, c := range cases {
		if c.setup != "" {
			if err := master.Exec(ctx, c.setup); err != nil {
				t.Fatal(err)
			}
		}
		err := add(c.source, c.pass)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: want a refusal containing %q, got %v", c.name, c.want, err)
		}
	}
	if out, err := fl.CLI(ctx, "upstream", "list"); err != nil || strings.Contains(out, "\nu ") {
		t.Fatalf("a refused upstream must not be added: %v\n%s", err, out)
	}
	if err := master.Exec(ctx, "SET GLOBAL binlog_format=ROW"); err != nil {
		t.Fatal(err)
	}
	if err := add(master.Addr(), upstreamPass); err != nil {
		t.Fatalf("a good master must be accepted after fixing it: %v", err)
	}
	// Refused by the admin API's check, before the master is asked (the metadata's
	// applier, which refuses it too, would say "remove it first").
	if err := add(master.Addr(), upstreamPass); err == nil || !strings.Contains(err.Error(), `upstream "u" already exists`) || strings.Contains(err.Error(), "remove it first") {
		t.Fatalf("adding a name twice: want the admin API's refusal naming it, got %v", err)
	}

	// Pause stops pulling (the syncer disconnects); resume catches up exactly.
	executed := func() (string, bool) {
		u := getUpstream(ctx, t, fl, "u")
		return u.Group.ExecutedGtid, u.Group.Syncing
	}
	waitFor := func(what string, ok func() bool) {
		for deadline := time.Now().Add(60 * time.Second); !ok(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	if err := master.Exec(ctx, "CREATE DATABASE IF NOT EXISTS pausetest"); err != nil {
		t.Fatal(err)
	}
	want, _ := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	waitFor("Flotilla to catch up before the pause", func() bool { g, _ := executed(); return g == want })
	if out, err := fl.CLI(ctx, "upstream", "pause", "u"); err != nil || !strings.Contains(out, "u") {
		t.Fatalf("pause: %v %s", err, out)
	}
	waitFor("the syncer to stop", func() bool { _, syncing := executed(); return !syncing })
	if err := master.Exec(ctx, "CREATE TABLE pausetest.t (a INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	after, _ := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	if g, _ := executed(); g != want {
		t.Fatalf("paused upstream moved from %s to %s", want, g)
	}
	if _, err := fl.CLI(ctx, "upstream", "resume", "u"); err != nil {
		t.Fatal(err)
	}
	waitFor("Flotilla to catch up after resume", func() bool { g, _ := executed(); return g == after })

	// Passwords stay out of the process list: the master's from a file, the replica
	// user's from the environment. An empty replica password is refused.
	pwFile := filepath.Join(dir, "source-password")
	if err := os.WriteFile(pwFile, []byte(upstreamPass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLOTILLA_REPLICA_PASSWORD", replicaPass)
	if out, err := fl.CLI(ctx, "upstream", "add", "u3", "--source", master.Addr(), "--user", upstreamUser, "--password-file", pwFile,
		"--replica-user", "repl3"); err != nil {
		t.Fatalf("upstream add with --password-file and $FLOTILLA_REPLICA_PASSWORD: %v\n%s", err, out)
	}
	if _, err := client.ConnectWithTimeout(fl.MySQLAddr, "repl3", replicaPass, "", 10*time.Second); err != nil {
		t.Fatalf("the replica user added with its password from the environment cannot log in: %v", err)
	}
	_, err = fl.CLI(ctx, "upstream", "add", "u4", "--source", master.Addr(), "--user", upstreamUser, "--password-file", pwFile,
		"--replica-user", "repl4", "--replica-password", "")
	if err == nil || !strings.Contains(err.Error(), `replica user "repl4" has an empty password`) {
		t.Fatalf("an empty replica password must be refused: %v", err)
	}

	// The server_id Flotilla uses toward the master is its own: not the master's, and
	// not one another replica of the master registered (listing replicas needs
	// REPLICATION MASTER ADMIN).
	for _, host := range []string{"%", "127.0.0.1"} {
		if err := master.Exec(ctx, fmt.Sprintf("GRANT REPLICATION MASTER ADMIN ON *.* TO '%s'@'%s'", upstreamUser, host)); err != nil {
			t.Fatal(err)
		}
	}
	sid := getUpstream(ctx, t, fl, "u").Upstream.SyncerServerID.String()
	if sid == "" || sid == "1" {
		t.Fatalf("upstream u has syncer server id %q", sid)
	}
	for id, want := range map[string]string{"1": "master " + master.Addr() + "'s own server_id", sid: "already has a replica with server_id " + sid} {
		_, err := fl.CLI(ctx, "upstream", "add", "u2", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
			"--replica-user", "repl2", "--replica-password", replicaPass, "--server-id", id)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--server-id %s: want a refusal containing %q, got %v", id, want, err)
		}
	}
}
