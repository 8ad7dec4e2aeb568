package mysqlfront

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
)

func TestAllowList(t *testing.T) {
	l, err := ParseAllowList("127.0.0.2, 10.0.0.0/8,::1")
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{
		"127.0.0.2:5000": true, "127.0.0.1:5000": false, "10.1.2.3:1": true, "11.0.0.1:1": false, "[::1]:3": true, "[::ffff:10.0.0.1]:3": true,
	} {
		a, _ := net.ResolveTCPAddr("tcp", addr)
		if got := l.Allows(a); got != want {
			t.Errorf("%s: allowed=%v, want %v", addr, got, want)
		}
	}
	for _, bad := range []string{"", "10.0.0.0/33", "host.example", ","} {
		if _, err := ParseAllowList(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestHeartbeatPeriodFloor(t *testing.T) {
	for in, want := range map[string]time.Duration{"1": time.Millisecond, "0": 0, "x": 0, "2000000000": 2 * time.Second, " 500000 ": time.Millisecond} {
		if got := heartbeatPeriod(in); got != want {
			t.Errorf("heartbeatPeriod(%q) = %v, want %v", in, got, want)
		}
	}
	// The local source applies the same floor to what another node relays.
	for in, want := range map[time.Duration]time.Duration{1: time.Millisecond, 0: 0, -5: 0, time.Second: time.Second} {
		if got := servedHeartbeat(in); got != want {
			t.Errorf("servedHeartbeat(%v) = %v, want %v", in, got, want)
		}
	}
}

// trickleConn hands its data out a few bytes per Read, as a slow network would.
type trickleConn struct {
	net.Conn
	r    io.Reader
	step int
}

func (c *trickleConn) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.step)]) }

func rawPacket(seq byte, n int) []byte {
	b := []byte{byte(n), byte(n >> 8), byte(n >> 16), seq}
	return append(b, bytes.Repeat([]byte{'x'}, n)...)
}

// startLimited runs a front end with limits on a loopback port.
func startLimited(t *testing.T, l Limits) string {
	t.Helper()
	ss := newTestSession()
	s := New(ss.s.router, 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.Limits = l
	return serveFront(t, s)
}

// serveFront runs s on a loopback port until the test ends and returns its address.
func serveFront(t *testing.T, s *Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = s.Serve(ctx, lis) }()
	return lis.Addr().String()
}

func wantCode(t *testing.T, what string, err error, code uint16) {
	t.Helper()
	var me *mysql.MyError
	if !errors.As(err, &me) || me.Code != code {
		t.Fatalf("%s: want MySQL error %d, got %v", what, code, err)
	}
}

func TestConnectionLimits(t *testing.T) {
	addr := startLimited(t, Limits{MaxConnections: 3, MaxUserConnections: 2, MaxAllowedPacket: 1 << 20})
	var conns []*client.Conn
	for i := 0; i < 2; i++ {
		c, err := client.ConnectWithTimeout(addr, "repl", "pw", "", 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	_, err := client.ConnectWithTimeout(addr, "repl", "pw", "", 5*time.Second)
	wantCode(t, "a third connection of one user", err, mysql.ER_TOO_MANY_USER_CONNECTIONS)
	// A third connection, not yet logged in, fills the node; a fourth is refused.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	var wg chan error = make(chan error, 1)
	go func() {
		_, err := client.ConnectWithTimeout(addr, "repl", "pw", "", 5*time.Second)
		wg <- err
	}()
	wantCode(t, "a connection over --max-connections", <-wg, mysql.ER_CON_COUNT_ERROR)

	// A statement above the packet limit ends that connection with 1153.
	_, err = conns[0].Execute("SELECT '" + strings.Repeat("x", 2<<20) + "'")
	wantCode(t, "a 2 MiB statement", err, mysql.ER_NET_PACKET_TOO_LARGE)
	if _, err := conns[1].Execute("SELECT 1"); err != nil {
		t.Fatalf("the other session must go on: %v", err)
	}
}

func TestAllowIPsAndIdleTimeout(t *testing.T) {
	l, _ := ParseAllowList("127.0.0.2")
	addr := startLimited(t, Limits{AllowIPs: l})
	_, err := client.ConnectWithTimeout(addr, "repl", "pw", "", 5*time.Second)
	wantCode(t, "a client outside --allow-ips", err, mysql.ER_HOST_NOT_PRIVILEGED)

	// A second, not less: the first query must come within it of the login, on a
	// loaded machine too.
	addr = startLimited(t, Limits{IdleTimeout: time.Second})
	c, err := client.ConnectWithTimeout(addr, "repl", "pw", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Execute("SELECT 1"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := c.Execute("SELECT 1"); err != nil {
			break // closed as idle
		}
		if time.Now().After(deadline) {
			t.Fatal("an idle session was never closed")
		}
		time.Sleep(1200 * time.Millisecond)
	}
}

// TestSessionBounds: a session's user variables are bounded in number, name and
// size (a refused SET applies nothing), and a client that stops reading its
// answers loses its session after WriteTimeout instead of holding it.
func TestSessionBounds(t *testing.T) {
	ss := newTestSession()
	for i := range maxUserVars {
		if _, err := ss.query(fmt.Sprintf("SET @v%d = 'x'", i)); err != nil {
			t.Fatalf("variable %d: %v", i, err)
		}
	}
	_, err := ss.query("SET @one_too_many = 1")
	wantCode(t, "a variable over the count", err, mysql.ER_WRONG_VALUE_FOR_VAR)
	if _, err := ss.query("SET @v0 = 'y'"); err != nil {
		t.Fatalf("reassigning a variable must pass: %v", err)
	}
	_, err = ss.query("SET @v1 = '" + strings.Repeat("x", maxUserVarsBytes) + "'")
	wantCode(t, "a variable over the size", err, mysql.ER_WRONG_VALUE_FOR_VAR)
	if v := ss.vars["v1"]; v == nil || *v != "x" {
		t.Fatal("a refused SET must leave the variable as it was")
	}
	_, err = ss.query("SET @" + strings.Repeat("n", maxUserVarName+1) + " = 1")
	wantCode(t, "a long variable name", err, mysql.ER_TOO_LONG_IDENT)

	s := New(ss.s.router, 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.Limits = Limits{WriteTimeout: 300 * time.Millisecond}
	addr := serveFront(t, s)
	c, err := client.ConnectWithTimeout(addr, "repl", "pw", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Execute("SET @big = '" + strings.Repeat("x", 200<<10) + "'"); err != nil {
		t.Fatal(err)
	}
	// Ask for 200 KiB answers and never read them: once the socket buffers fill, a
	// write blocks, times out, and the session ends.
	q := append([]byte{0, 0, 0, 0, comQuery}, "SELECT @big"...)
	q[0] = byte(len(q) - 4)
	go func() {
		for range 500 {
			if _, err := c.Conn.Conn.Write(q); err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for s.active.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("a client that stopped reading still holds its session")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
