package mysqlfront

import (
	"bytes"
	"context"
	"errors"
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

// TestLimitConnRefusesBeforeTheBody: a header announcing more than the limit (alone,
// or summed over continuation packets) fails the read that completes it, and no
// byte of it completes a header the reader could act on.
func TestLimitConnRefusesBeforeTheBody(t *testing.T) {
	for _, step := range []int{1, 3, 7, 4096} {
		small := rawPacket(0, 100)
		big := []byte{0x00, 0x00, 0x20, 1} // 2 MiB announced, no body follows
		lc := &limitConn{Conn: nil, max: 1 << 20}
		lc.Conn = &trickleConn{r: bytes.NewReader(append(small, big...)), step: step}
		var got []byte
		buf := make([]byte, 8192)
		var err error
		for err == nil {
			var n int
			n, err = lc.Read(buf)
			got = append(got, buf[:n]...)
		}
		if !errors.Is(err, errPacketTooLarge) {
			t.Fatalf("step %d: err = %v, want errPacketTooLarge", step, err)
		}
		if len(got) > len(small)+3 || !bytes.Equal(got[:len(small)], small) {
			t.Fatalf("step %d: handed out %d bytes, want the first packet and at most 3 header bytes", step, len(got))
		}
		if lc.seq != 1 {
			t.Fatalf("step %d: offending sequence %d, want 1", step, lc.seq)
		}
	}
	// Continuations count together: 0xffffff + 0xffffff > 16 MiB + 1.
	cont := []byte{0xff, 0xff, 0xff, 0}
	lc := &limitConn{max: 16<<20 + 1}
	lc.Conn = &trickleConn{r: io.MultiReader(bytes.NewReader(cont), bytes.NewReader(make([]byte, 0xffffff)), bytes.NewReader([]byte{0xff, 0xff, 0xff, 1})), step: 1 << 20}
	var err error
	for err == nil {
		_, err = lc.Read(make([]byte, 1<<20))
	}
	if !errors.Is(err, errPacketTooLarge) {
		t.Fatalf("continuations: err = %v, want errPacketTooLarge", err)
	}
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

	addr = startLimited(t, Limits{IdleTimeout: 300 * time.Millisecond})
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
		time.Sleep(time.Duration(400) * time.Millisecond)
	}
}

// FuzzLimitConn: any client byte stream, read in any chunk size, never panics the
// framing reader, never hands out more than it read, and once over the limit stays
// over it.
func FuzzLimitConn(f *testing.F) {
	f.Add([]byte{1, 0, 0, 0, 'x', 0xff, 0xff, 0xff, 1}, uint8(3), uint16(100))
	f.Add([]byte{0, 0, 0x20, 0}, uint8(1), uint16(1000))
	f.Fuzz(func(t *testing.T, stream []byte, step uint8, max uint16) {
		lc := &limitConn{max: int64(max)}
		lc.Conn = &trickleConn{r: bytes.NewReader(stream), step: int(step%32) + 1}
		buf := make([]byte, 64)
		total, over := 0, false
		for {
			n, err := lc.Read(buf)
			if n < 0 || n > len(buf) {
				t.Fatalf("Read returned %d", n)
			}
			total += n
			if over && n > 0 {
				t.Fatal("bytes handed out after the limit was exceeded")
			}
			if errors.Is(err, errPacketTooLarge) {
				over = true
				if _, err := lc.Read(buf); !errors.Is(err, errPacketTooLarge) {
					t.Fatal("a reader over the limit must stay over it")
				}
				break
			}
			if err != nil {
				break
			}
		}
		if total > len(stream) {
			t.Fatalf("handed out %d bytes of a %d-byte stream", total, len(stream))
		}
		_, _ = ParseAllowList(string(stream))
	})
}
