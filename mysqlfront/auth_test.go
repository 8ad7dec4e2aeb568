package mysqlfront

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/internal/mysqlauth"
	"github.com/flotilla-relay/flotilla/internal/tlstest"
	"github.com/flotilla-relay/flotilla/placement"
)

func hashed(t *testing.T, user, plugin, pw string, requireTLS bool) placement.ReplicaUser {
	t.Helper()
	h, err := mysqlauth.Hash(plugin, pw)
	if err != nil {
		t.Fatal(err)
	}
	return placement.ReplicaUser{User: user, Plugin: plugin, Hash: h, RequireTLS: requireTLS}
}

// startAuthFront serves two upstreams that share the user "shared" with different
// passwords, plus a caching_sha2_password user and a user that requires TLS.
func startAuthFront(t *testing.T, withTLS *tls.Config) string {
	t.Helper()
	a := &placement.Upstream{Name: "a", ServerID: 7, GroupID: 2, Version: "10.11.6-MariaDB-log", ReplicaUsers: []placement.ReplicaUser{
		hashed(t, "shared", mysqlauth.Native, "pw-a", false),
		hashed(t, "sha", mysqlauth.CachingSHA2, "pw-s", false),
		hashed(t, "secure", mysqlauth.Native, "pw-t", true),
		{User: "legacy", Password: "old-pw"}, // metadata from before hashes were kept
	}}
	b := &placement.Upstream{Name: "b", ServerID: 9, GroupID: 3, Version: "10.11.6-MariaDB-log", ReplicaUsers: []placement.ReplicaUser{
		hashed(t, "shared", mysqlauth.Native, "pw-b", false),
	}}
	st := &placement.State{Upstreams: map[string]*placement.Upstream{"a": a, "b": b}}
	s := New(fakeRouter{st}, 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.TLS = withTLS
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = s.Serve(ctx, lis) }()
	return lis.Addr().String()
}

// serverID logs in and asks @@server_id: it tells which upstream the login reached.
func serverID(addr, user, pw string, opts ...client.Option) (string, error) {
	c, err := client.ConnectWithTimeout(addr, user, pw, "", 5*time.Second, opts...)
	if err != nil {
		return "", err
	}
	defer c.Close()
	r, err := c.Execute("SELECT @@server_id")
	if err != nil {
		return "", err
	}
	v, err := r.GetString(0, 0)
	return v, err
}

func wantRefused(t *testing.T, what string, err error, msg string) {
	t.Helper()
	wantCode(t, what, err, mysql.ER_ACCESS_DENIED_ERROR)
	var me *mysql.MyError
	if errors.As(err, &me); me.Message != msg {
		t.Fatalf("%s: message %q, want MySQL's standard %q", what, me.Message, msg)
	}
}

func TestPasswordChoosesTheUpstream(t *testing.T) {
	addr := startAuthFront(t, nil)
	for pw, want := range map[string]string{"pw-a": "7", "pw-b": "9"} {
		got, err := serverID(addr, "shared", pw)
		if err != nil || got != want {
			t.Fatalf("shared user with %s: server_id %q (%v), want %s: the password must choose the upstream", pw, got, err, want)
		}
	}
	_, err := serverID(addr, "shared", "pw-c")
	wantRefused(t, "a password no upstream declared", err, "Access denied for user 'shared'@'127.0.0.1' (using password: YES)")
	_, err = serverID(addr, "shared", "")
	wantRefused(t, "no password", err, "Access denied for user 'shared'@'127.0.0.1' (using password: NO)")
	_, err = serverID(addr, "stranger", "x")
	wantRefused(t, "an unknown user", err, "Access denied for user 'stranger'@'127.0.0.1' (using password: YES)")
	if got, err := serverID(addr, "legacy", "old-pw"); err != nil || got != "7" {
		t.Fatalf("a user from old metadata (cleartext password) must still log in: %q %v", got, err)
	}
}

func TestCachingSHA2WithoutTLSUsesTheRSAExchange(t *testing.T) {
	addr := startAuthFront(t, nil)
	// First login: full authentication, the password RSA-encrypted with the node's
	// key (the client asks for it). Second: the fast path.
	for i := 0; i < 2; i++ {
		if got, err := serverID(addr, "sha", "pw-s"); err != nil || got != "7" {
			t.Fatalf("caching_sha2_password login %d: %q %v", i, got, err)
		}
	}
	_, err := serverID(addr, "sha", "wrong")
	wantRefused(t, "caching_sha2_password with a wrong password", err, "Access denied for user 'sha'@'127.0.0.1' (using password: YES)")
	_, err = serverID(addr, "secure", "pw-t")
	wantRefused(t, "a TLS-only user without TLS", err, "Access denied for user 'secure'@'127.0.0.1' (using password: YES)")
}

func TestTLSLogins(t *testing.T) {
	ca := tlstest.NewCA(t)
	addr := startAuthFront(t, tlstest.ServerConfig(t, ca.Issue(t, "flotilla")))
	useTLS := func(c *client.Conn) error {
		c.SetTLSConfig(&tls.Config{RootCAs: ca.Pool(), ServerName: "flotilla"})
		return nil
	}
	for _, login := range []struct{ user, pw, want string }{
		{"secure", "pw-t", "7"}, {"sha", "pw-s", "7"}, {"shared", "pw-b", "9"},
	} {
		if got, err := serverID(addr, login.user, login.pw, useTLS); err != nil || got != login.want {
			t.Fatalf("%s over TLS: %q %v", login.user, got, err)
		}
	}
	_, err := serverID(addr, "sha", "nope", useTLS)
	wantRefused(t, "caching_sha2_password over TLS, wrong password", err, "Access denied for user 'sha'@'127.0.0.1' (using password: YES)")
	// A client that does not trust the certificate gets no session.
	if _, err := serverID(addr, "secure", "pw-t", func(c *client.Conn) error {
		c.SetTLSConfig(&tls.Config{ServerName: "flotilla"})
		return nil
	}); err == nil {
		t.Fatal("a client that cannot verify the server's certificate must not log in")
	}
}
