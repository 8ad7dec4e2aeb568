package mysqlfront

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/flotilla-relay/flotilla/placement"
)

func TestParseListener(t *testing.T) {
	for spec, want := range map[string]Listener{
		"127.0.0.1:3307":                      {Addr: "127.0.0.1:3307", Flavor: "mariadb"},
		"mariadb=0.0.0.0:3307,version=10.6.4": {Addr: "0.0.0.0:3307", Flavor: "mariadb", Version: "10.6.4"},
		"mysql=0.0.0.0:3308,version=8.4.3":    {Addr: "0.0.0.0:3308", Flavor: "mysql", Version: "8.4.3"},
		"MySQL=[::1]:3308":                    {Addr: "[::1]:3308", Flavor: "mysql"},
	} {
		got, err := ParseListener(spec)
		if err != nil || got != want {
			t.Errorf("ParseListener(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
		if again, err := ParseListener(got.String()); err != nil || again != got {
			t.Errorf("%q: String %q does not parse back: %+v, %v", spec, got.String(), again, err)
		}
	}
	for spec, msg := range map[string]string{
		"3307":                                     "not HOST:PORT",
		"oracle=127.0.0.1:1":                       "neither mariadb nor mysql",
		"mysql=127.0.0.1:1,verison=8.0.1":          "unknown option",
		"mysql=127.0.0.1:1,version=8":              "MAJOR.MINOR.PATCH",
		"mysql=127.0.0.1:1,version=10.6.4-MariaDB": "must not announce a MariaDB version",
	} {
		if _, err := ParseListener(spec); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseListener(%q) = %v, want an error saying %q", spec, err, msg)
		}
	}
}

// twoFlavorUpstreams is a MariaDB and a MySQL upstream, each with its own user, and
// a third user both share.
func twoFlavorUpstreams() *placement.State {
	maria := &placement.Upstream{Name: "maria", ServerID: 7, Version: "10.11.6-MariaDB-log", GroupID: 2,
		ReplicaUsers: []placement.ReplicaUser{{User: "mrepl", Password: "pw"}, {User: "both", Password: "pw"}}}
	my := &placement.Upstream{Name: "my", Flavor: "mysql", ServerID: 8, Version: "8.0.36", GroupID: 3,
		ReplicaUsers: []placement.ReplicaUser{{User: "myrepl", Password: "pw"}, {User: "both", Password: "pw"}}}
	return &placement.State{Upstreams: map[string]*placement.Upstream{"maria": maria, "my": my}}
}

// serveListeners runs one front end on a port per listener and returns their
// addresses.
func serveListeners(t *testing.T, st *placement.State, faces ...string) []string {
	t.Helper()
	s := New(fakeRouter{st}, 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var addrs []string
	var lis []net.Listener
	for _, f := range faces {
		l, err := ParseListener(f)
		if err != nil {
			t.Fatal(err)
		}
		nl, err := net.Listen("tcp", l.Addr)
		if err != nil {
			t.Fatal(err)
		}
		l.Addr = nl.Addr().String()
		s.Listeners = append(s.Listeners, l)
		lis = append(lis, nl)
		addrs = append(addrs, l.Addr)
	}
	for i, nl := range lis {
		go func() { _ = s.ServeAs(ctx, nl, s.Listeners[i]) }()
	}
	return addrs
}

func queryOne(t *testing.T, c *client.Conn, q string) string {
	t.Helper()
	r, err := c.Execute(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	v, err := r.GetString(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestListenerFlavors: each port greets as its flavor and answers the version it
// announces; a login on the wrong port is told the right one, and a single default
// port still serves both flavors.
func TestListenerFlavors(t *testing.T) {
	st := twoFlavorUpstreams()
	addrs := serveListeners(t, st, "127.0.0.1:0", "mysql=127.0.0.1:0,version=8.4.3")
	maria, my := addrs[0], addrs[1]

	c, err := client.ConnectWithTimeout(my, "myrepl", "pw", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if v := c.GetServerVersion(); v != "8.4.3-flotilla" {
		t.Errorf("the MySQL port greets with %q", v)
	}
	for q, want := range map[string]string{"SELECT VERSION()": "8.4.3", "SELECT @@version": "8.4.3", "SELECT @@version_comment": "MySQL Community Server"} {
		if got := queryOne(t, c, q); !strings.HasPrefix(got, want) {
			t.Errorf("MySQL port: %s = %q, want %q", q, got, want)
		}
	}
	c.Close()

	c, err = client.ConnectWithTimeout(maria, "mrepl", "pw", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if v := c.GetServerVersion(); v != "5.5.5-10.11.6-MariaDB-flotilla" {
		t.Errorf("the MariaDB port greets with %q", v)
	}
	if got := queryOne(t, c, "SELECT VERSION()"); got != "10.11.6-MariaDB-log" {
		t.Errorf("MariaDB port without a version answers %q, want the upstream's", got)
	}
	c.Close()

	// Wrong ports: the error names the right one.
	_, err = client.ConnectWithTimeout(maria, "myrepl", "pw", "", 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "upstream my is a MySQL master: connect to this node's MySQL port "+my) {
		t.Errorf("a MySQL upstream's user on the MariaDB port: %v", err)
	}
	_, err = client.ConnectWithTimeout(my, "mrepl", "pw", "", 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "connect to this node's MariaDB port "+maria) {
		t.Errorf("a MariaDB upstream's user on the MySQL port: %v", err)
	}
	// A wrong password on the wrong port is a wrong password: the port is told
	// only to who logged in.
	_, err = client.ConnectWithTimeout(maria, "myrepl", "nope", "", 5*time.Second)
	if err == nil || strings.Contains(err.Error(), "port") {
		t.Errorf("a wrong password on the wrong port: %v", err)
	}
	// A user both upstreams share reaches the one of the port's flavor.
	c, err = client.ConnectWithTimeout(my, "both", "pw", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := queryOne(t, c, "SELECT @@server_id"); got != "8" {
		t.Errorf("a shared user on the MySQL port reaches server_id %s", got)
	}
	c.Close()

	// One default port serves both flavors, as before ports had flavors.
	only := serveListeners(t, st, "127.0.0.1:0")[0]
	c, err = client.ConnectWithTimeout(only, "myrepl", "pw", "", 5*time.Second)
	if err != nil {
		t.Fatalf("a MySQL upstream's user on a node with only the default port: %v", err)
	}
	if got := queryOne(t, c, "SELECT VERSION()"); got != "8.0.36" {
		t.Errorf("default port, MySQL upstream: VERSION() = %q, want the upstream's", got)
	}
	c.Close()
}
