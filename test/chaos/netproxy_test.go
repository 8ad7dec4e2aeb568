package chaos

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// echoServer answers each line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return lis.Addr().String()
}

type line struct {
	c net.Conn
	r *bufio.Reader
}

func dialLine(t *testing.T, addr string) *line {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &line{c: c, r: bufio.NewReader(c)}
}

// roundTrip sends s and waits up to wait for the echo: "" when none came.
func (l *line) roundTrip(t *testing.T, s string, wait time.Duration) (string, error) {
	t.Helper()
	if _, err := l.c.Write([]byte(s + "\n")); err != nil {
		return "", err
	}
	l.c.SetReadDeadline(time.Now().Add(wait))
	got, err := l.r.ReadString('\n')
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return "", nil
	}
	return strings.TrimSuffix(got, "\n"), err
}

// A cut stalls connections (no byte passes, nothing is reset), old and new; a heal
// resumes them, or resets the ones that stalled; a cut by source stalls only the
// connections whose stream named that source.
func TestProxyCutsAndHeals(t *testing.T) {
	p, err := newProxy(echoServer(t), "node-A", "node-B")
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	a := dialLine(t, p.Addr)
	helloA := "hello from " + string(sourceField("node-A"))
	if got, err := a.roundTrip(t, helloA, time.Second); got != helloA {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}
	p.cutAll()
	if got, err := a.roundTrip(t, "lost?", 300*time.Millisecond); got != "" || err != nil {
		t.Fatalf("a cut connection passed %q (%v)", got, err)
	}
	fresh := dialLine(t, p.Addr)
	if got, _ := fresh.roundTrip(t, "new", 300*time.Millisecond); got != "" {
		t.Fatalf("a connection opened during the cut passed %q", got)
	}
	p.heal(false)
	// The stalled bytes arrive: TCP got through.
	a.c.SetReadDeadline(time.Now().Add(time.Second))
	if got, err := a.r.ReadString('\n'); got != "lost?\n" {
		t.Fatalf("after the heal the stalled line is %q, %v", got, err)
	}
	if got, _ := fresh.roundTrip(t, "again", time.Second); got != "new" {
		t.Fatalf("the connection opened during the cut, after the heal: %q", got)
	}

	b := dialLine(t, p.Addr)
	helloB := "I am " + string(sourceField("node-B"))
	if got, _ := b.roundTrip(t, helloB, time.Second); got != helloB {
		t.Fatalf("node-B's connection: %q", got)
	}
	// A connection that merely mentions node-B's address is not node-B's.
	m := dialLine(t, p.Addr)
	if got, _ := m.roundTrip(t, "a record naming node-B", time.Second); got != "a record naming node-B" {
		t.Fatalf("the third connection: %q", got)
	}
	p.cutFrom("node-B")
	if got, _ := m.roundTrip(t, "still mine", time.Second); got != "still mine" {
		t.Fatalf("a connection that only mentioned node-B was cut with node-B's: %q", got)
	}
	if got, _ := b.roundTrip(t, "cut?", 300*time.Millisecond); got != "" {
		t.Fatalf("node-B's connection passed %q during a cut from node-B", got)
	}
	if got, _ := a.roundTrip(t, "still here", time.Second); got != "still here" {
		t.Fatalf("node-A's connection during a cut from node-B: %q", got)
	}
	p.heal(true)
	b.c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := b.r.ReadString('\n'); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("a reset heal left node-B's stalled connection open: %v", err)
	}
}
