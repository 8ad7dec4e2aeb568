package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	adminv1 "github.com/flotilla-relay/flotilla/proto/adminv1"
	"github.com/flotilla-relay/flotilla/server"
)

// Every serve flag has a configuration key and every key a flag (the admin token
// only comes from the file or $FLOTILLA_TOKEN: a flag would show it in ps).
func TestEveryFlagHasAConfigKey(t *testing.T) {
	keys := server.ConfigKeys()
	var flagKeys []string
	for _, sf := range serveFlags() {
		if !slices.Contains(keys, sf.key) {
			t.Errorf("flag --%s sets key %q, which the configuration does not have", sf.flag.Names()[0], sf.key)
		}
		flagKeys = append(flagKeys, sf.key)
	}
	for _, k := range keys {
		if !slices.Contains(flagKeys, k) && k != "admin_token" {
			t.Errorf("configuration key %q has no flag", k)
		}
	}
}

// Every command's --help shows an example of its use, and every command that prints
// something takes -o json.
func TestEveryCommandHasAnExampleAndJSON(t *testing.T) {
	var walk func(cmds []*cli.Command, parent string)
	walk = func(cmds []*cli.Command, parent string) {
		for _, c := range cmds {
			full := parent + " " + c.Name
			if !strings.Contains(c.Description, "Example:\n   flotilla ") {
				t.Errorf("%s --help has no example", full)
			}
			if len(c.Subcommands) == 0 && c.Name != "serve" {
				hasOutput := false
				for _, f := range c.Flags {
					hasOutput = hasOutput || f.Names()[0] == "output"
				}
				if !hasOutput {
					t.Errorf("%s has no -o json", full)
				}
			}
			walk(c.Subcommands, full)
		}
	}
	walk(newApp().Commands, "flotilla")
}

// Tables fit 80 columns with realistic values (long ones are clipped; -o json has
// everything).
func TestTablesFit80Columns(t *testing.T) {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	upstreamTable(w, []*adminv1.UpstreamStatus{{
		Upstream: &adminv1.Upstream{Name: "orders-primary-eu-west", Flavor: "mariadb", Source: "orders-db-01.eu-west.example.com:3306", GroupId: 1234},
		Group: &adminv1.GroupStatus{LeaderNode: 12, ExecutedGtid: "0-101-123456789,1-102-987654321", CurrentFile: "flotilla-bin.000123",
			Connected: true, LagSeconds: 12345, Replicas: make([]*adminv1.ConnectedReplica, 120)},
	}})
	fmt.Fprintln(w)
	nodeTable(w, []*adminv1.Node{{Id: 12, State: "up", Draining: true, MysqlAddr: "10.200.300.400:3307", AdminAddr: "10.200.300.400:7070",
		RaftAddr: "10.200.300.400:7071", Groups: 1000, Leaders: 333, Labels: map[string]string{"zone": "eu-west-1a", "rack": "r17"}}})
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(b.String(), "\n") {
		if n := len([]rune(line)); n > 80 {
			t.Errorf("%d columns: %q", n, line)
		}
	}
}

// A node refuses to start with raft off the loopback without node TLS, or with an
// admin token alone off the loopback, unless told the network is trusted; the admin
// token may come from a file. Both the bound and the advertised address count.
func TestServeRefusesOpenPortsOffLoopback(t *testing.T) {
	dir := t.TempDir()
	tokenFile := dir + "/token"
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string // "" = valid
	}{
		{[]string{"--raft-addr", "10.1.2.3:7071"}, "--insecure-raft"},
		{[]string{"--raft-addr", "10.1.2.3:7071", "--insecure-raft"}, ""},
		// A loopback bind behind a forward from the network is exposed all the same.
		{[]string{"--raft-addr", "10.1.2.3:7071", "--raft-listen-addr", "127.0.0.1:7071"}, "--insecure-raft"},
		{[]string{"--raft-listen-addr", "0.0.0.0:7071"}, "--insecure-raft"},
		{[]string{"--admin-addr", "10.1.2.3:7070", "--admin-listen-addr", "127.0.0.1:7070"}, "would accept anyone"},
		{[]string{"--admin-addr", "10.1.2.3:7070", "--admin-token-file", tokenFile}, "--insecure-admin"},
		{[]string{"--admin-addr", "10.1.2.3:7070", "--admin-token-file", tokenFile, "--insecure-admin"}, ""},
		{[]string{"--admin-addr", "10.1.2.3:7070"}, "would accept anyone"},
		{[]string{"--admin-token-file", dir + "/missing"}, "--admin-token-file"},
	} {
		err := newApp().Run(append([]string{"flotilla", "serve", "--check-config", "--data", dir}, tc.args...))
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("serve %v: got %v, want %q", tc.args, err, tc.want)
		}
	}
}

// Size flags take units, and a size flag's help shows its default once.
func TestServeSizesTakeUnits(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-allowed-packet", "64M", "--served-file-size", "256MiB", "--segment-size", "4K", "--retention-bytes", "10G"}, ""},
		{[]string{"--max-allowed-packet", "64Q"}, "--max-allowed-packet"},
		{[]string{"--served-file-size", "100K"}, "outside 1 MiB to 3 GiB"},
	} {
		err := newApp().Run(append([]string{"flotilla", "serve", "--check-config", "--data", dir}, tc.args...))
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("serve %v: got %v, want %q", tc.args, err, tc.want)
		}
	}
	for _, sf := range serveFlags() {
		if s, ok := sf.flag.(*cli.StringFlag); ok && s.DefaultText != "" && strings.Contains(s.Usage, "default") {
			t.Errorf("--%s states its default twice", s.Name)
		}
	}
}
