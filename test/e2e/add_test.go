package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
}
