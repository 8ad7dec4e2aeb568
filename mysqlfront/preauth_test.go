package mysqlfront

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/packet"

	"github.com/flotilla-relay/flotilla/internal/mysqlauth"
	"github.com/flotilla-relay/flotilla/placement"
)

// dialGreeted connects and reads the greeting.
func dialGreeted(t *testing.T, addr string) (net.Conn, *packet.Conn) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	pc := packet.NewConn(nc)
	if p, err := pc.ReadPacket(); err != nil || len(p) == 0 || p[0] == mysql.ERR_HEADER {
		t.Fatalf("greeting: got %q, %v", p, err)
	}
	return nc, pc
}

// handshakeResponse41 builds a client's answer to the greeting.
func handshakeResponse41(user, plugin string, authData []byte) []byte {
	caps := uint32(mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_PLUGIN_AUTH | mysql.CLIENT_LONG_PASSWORD)
	resp := binary.LittleEndian.AppendUint32(make([]byte, 4), caps)
	resp = append(resp, 0, 0, 0, 1, 33)
	resp = append(resp, make([]byte, 23)...)
	resp = append(resp, user...)
	resp = append(resp, 0, byte(len(authData)))
	resp = append(resp, authData...)
	return append(resp, plugin+"\x00"...)
}

// errCode decodes an error packet's code (0 if it is not one).
func errCode(p []byte) uint16 {
	if len(p) < 3 || p[0] != mysql.ERR_HEADER {
		return 0
	}
	return binary.LittleEndian.Uint16(p[1:])
}

// TestNothingBeforeLoginCostsMemory: before login a packet over preAuthMaxPacket is
// refused at its header with a bad-handshake error, a name over 32 characters is
// refused without being echoed, and one address can hold only
// MaxHandshakesPerHost connections that have not logged in; logged-in sessions are
// not counted, and a closed handshake frees its place.
func TestNothingBeforeLoginCostsMemory(t *testing.T) {
	addr := startLimited(t, Limits{MaxHandshakesPerHost: 3, MaxAllowedPacket: 1 << 20})

	nc, pc := dialGreeted(t, addr)
	if _, err := nc.Write([]byte{0xff, 0xff, 0xff, 1}); err != nil { // 16 MiB announced
		t.Fatal(err)
	}
	pc.Sequence = 2
	p, err := pc.ReadPacket()
	if err != nil || errCode(p) != mysql.ER_HANDSHAKE_ERROR {
		t.Fatalf("a 16 MiB handshake response: want error %d, got %q %v", mysql.ER_HANDSHAKE_ERROR, p, err)
	}

	_, pc = dialGreeted(t, addr)
	long := strings.Repeat("u", 4096)
	if err := pc.WritePacket(handshakeResponse41(long, mysqlauth.Native, make([]byte, 20))); err != nil {
		t.Fatal(err)
	}
	if p, err = pc.ReadPacket(); err != nil || errCode(p) != mysql.ER_HANDSHAKE_ERROR || bytes.Contains(p, []byte("uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu")) {
		t.Fatalf("a 4 KiB user name: want error %d without the name, got %q %v", mysql.ER_HANDSHAKE_ERROR, p, err)
	}

	// A logged-in session does not count against the address.
	sess, err := client.ConnectWithTimeout(addr, "repl", "pw", "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var held []net.Conn
	for range 3 {
		nc, _ := dialGreeted(t, addr)
		held = append(held, nc)
	}
	_, err = client.ConnectWithTimeout(addr, "repl", "pw", "", 5*time.Second)
	wantCode(t, "a fourth connection still logging in from one address", err, mysql.ER_CON_COUNT_ERROR)
	held[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := client.ConnectWithTimeout(addr, "repl", "pw", "", 5*time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a closed handshake must free its place: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := sess.Execute("SELECT 1"); err != nil {
		t.Fatalf("the logged-in session must go on: %v", err)
	}
}

// firstReply sends a handshake response for user with plugin and returns what the
// server answers first: an auth switch names its plugin.
func firstReply(t *testing.T, addr, user, plugin string) string {
	t.Helper()
	_, pc := dialGreeted(t, addr)
	auth := make([]byte, 20)
	if plugin == mysqlauth.CachingSHA2 {
		auth = nil
	}
	if err := pc.WritePacket(handshakeResponse41(user, plugin, auth)); err != nil {
		t.Fatal(err)
	}
	p, err := pc.ReadPacket()
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case len(p) > 1 && p[0] == mysql.EOF_HEADER:
		name, _, _ := bytes.Cut(p[1:], []byte{0})
		return "switch to " + string(name)
	case errCode(p) != 0:
		return "error " + string(rune('0'+errCode(p)/1000)) + "xxx"
	}
	return "other"
}

// TestUnknownUsersAnswerLikeKnownOnes: the exchange never tells whether a user
// exists. With only native users, strangers meet native too; with both plugins in
// use, a stranger's plugin is fixed by a keyed hash of its name, the same on every
// node sharing the key, and both plugins occur.
func TestUnknownUsersAnswerLikeKnownOnes(t *testing.T) {
	native := &placement.Upstream{Name: "a", ServerID: 7, GroupID: 2, ReplicaUsers: []placement.ReplicaUser{hashed(t, "repl", mysqlauth.Native, "pw", false)}}
	start := func(st *placement.State, key []byte) string {
		s := New(fakeRouter{st}, 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
		s.DecoyKey = key
		return serveFront(t, s)
	}
	addr := start(&placement.State{Upstreams: map[string]*placement.Upstream{"a": native}}, nil)
	for _, plugin := range []string{mysqlauth.Native, mysqlauth.CachingSHA2} {
		known := firstReply(t, addr, "repl", plugin)
		for _, stranger := range []string{"root", "admin", "x"} {
			if got := firstReply(t, addr, stranger, plugin); got != known {
				t.Fatalf("client plugin %s: a known user gets %q, unknown %q gets %q", plugin, known, stranger, got)
			}
		}
	}
	mixed := &placement.Upstream{Name: "a", ServerID: 7, GroupID: 2, ReplicaUsers: []placement.ReplicaUser{
		hashed(t, "repl", mysqlauth.Native, "pw", false), hashed(t, "sha", mysqlauth.CachingSHA2, "pw", false)}}
	st := &placement.State{Upstreams: map[string]*placement.Upstream{"a": mixed}}
	key := []byte("cluster key")
	a1, a2 := start(st, key), start(st, key)
	seen := map[string]bool{}
	for i := range 24 {
		name := "stranger" + string(rune('a'+i))
		r1 := firstReply(t, a1, name, mysqlauth.CachingSHA2)
		if r2 := firstReply(t, a2, name, mysqlauth.CachingSHA2); r1 != r2 {
			t.Fatalf("two nodes answer %q differently: %q and %q", name, r1, r2)
		}
		if again := firstReply(t, a1, name, mysqlauth.CachingSHA2); again != r1 {
			t.Fatalf("one node answers %q differently twice: %q and %q", name, r1, again)
		}
		seen[r1] = true
	}
	if len(seen) != 2 {
		t.Fatalf("strangers must meet both plugins in use, got %v", seen)
	}
}

// TestRSASpentOnlyOnKnownUsers: a stranger logging in with caching_sha2_password
// without TLS goes through the whole RSA exchange and is refused as a wrong password
// (1045) without the node decrypting anything; a known user costs one decryption.
// With the RSA budget spent, both are told alike to retry (1040).
func TestRSASpentOnlyOnKnownUsers(t *testing.T) {
	up := &placement.Upstream{Name: "a", ServerID: 7, GroupID: 2, ReplicaUsers: []placement.ReplicaUser{hashed(t, "sha", mysqlauth.CachingSHA2, "pw-s", false)}}
	s := New(fakeRouter{&placement.State{Upstreams: map[string]*placement.Upstream{"a": up}}}, 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	addr := serveFront(t, s)
	_, err := serverID(addr, "nobody", "pw-s")
	wantCode(t, "a stranger", err, mysql.ER_ACCESS_DENIED_ERROR)
	if n := s.rsaDecrypts.Load(); n != 0 {
		t.Fatalf("a stranger cost %d RSA decryptions", n)
	}
	if _, err := serverID(addr, "sha", "pw-s"); err != nil {
		t.Fatal(err)
	}
	if n := s.rsaDecrypts.Load(); n != 1 {
		t.Fatalf("a known user's full authentication cost %d RSA decryptions, want 1", n)
	}
	s.rsaLogins.mu.Lock()
	s.rsaLogins.limit = 0
	s.rsaLogins.mu.Unlock()
	s.sha2Cache.Clear()
	_, err = serverID(addr, "sha", "pw-s")
	wantCode(t, "a known user over the RSA budget", err, mysql.ER_CON_COUNT_ERROR)
	_, err = serverID(addr, "nobody", "pw-s")
	wantCode(t, "a stranger over the RSA budget", err, mysql.ER_CON_COUNT_ERROR)
}

// TestRefusalLogsAreRateLimited: a burst of refused logins writes at most
// refusalLogsPerSecond WARN lines a second, and the next line says how many were
// dropped.
func TestRefusalLogsAreRateLimited(t *testing.T) {
	logs := &lockedWriter{w: &bytes.Buffer{}}
	s := New(fakeRouter{&placement.State{}}, 1, slog.New(slog.NewTextHandler(logs, nil)))
	addr := serveFront(t, s)
	start := time.Now()
	for range 40 {
		_, err := serverID(addr, "nobody", "x")
		wantCode(t, "a stranger", err, mysql.ER_ACCESS_DENIED_ERROR)
	}
	// The budget is per calendar second: count the seconds the burst touched (a
	// burst shorter than a second may straddle two).
	secs := int(time.Now().Truncate(time.Second).Sub(start.Truncate(time.Second))/time.Second) + 1
	if n := strings.Count(logs.String(), "replica login refused"); n > secs*refusalLogsPerSecond {
		t.Fatalf("%d refusal lines in %d s, want at most %d a second", n, secs, refusalLogsPerSecond)
	}
	// A second later the budget is back, and the line counts what was dropped.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	_, _ = serverID(addr, "nobody", "x")
	if !strings.Contains(logs.String(), "suppressed_before=") {
		t.Fatalf("the first line after dropped ones must count them:\n%s", logs.String())
	}
}
