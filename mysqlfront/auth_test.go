package mysqlfront

import (
	"bytes"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/packet"

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
	return serveFront(t, s)
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

// A MySQL 8 client whose default plugin is caching_sha2_password answers the
// mysql_native_password greeting with that plugin and no data, and waits to be
// switched: it must be asked again (with a fresh nonce), then pass full
// authentication with the RSA exchange.
func TestClientStartingWithCachingSHA2IsSwitched(t *testing.T) {
	addr := startAuthFront(t, nil)
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	pc := packet.NewConn(nc)
	if _, err := pc.ReadPacket(); err != nil { // greeting
		t.Fatal(err)
	}
	caps := uint32(mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_PLUGIN_AUTH | mysql.CLIENT_LONG_PASSWORD)
	resp := binary.LittleEndian.AppendUint32(make([]byte, 4), caps)
	resp = append(resp, 0, 0, 0, 1, 33)
	resp = append(resp, make([]byte, 23)...)
	resp = append(resp, "sha\x00"...)
	resp = append(resp, 0) // no auth data
	resp = append(resp, "caching_sha2_password\x00"...)
	if err := pc.WritePacket(resp); err != nil {
		t.Fatal(err)
	}
	sw, err := pc.ReadPacket()
	if err != nil {
		t.Fatal(err)
	}
	if len(sw) < 1 || sw[0] != mysql.EOF_HEADER || !bytes.HasPrefix(sw[1:], []byte("caching_sha2_password\x00")) {
		t.Fatalf("want an auth switch to caching_sha2_password, got %q", sw)
	}
	nonce := bytes.TrimSuffix(sw[1+len("caching_sha2_password\x00"):], []byte{0})
	if err := pc.WritePacket(append(make([]byte, 4), mysqlauth.Scramble(mysqlauth.CachingSHA2, "pw-s", nonce)...)); err != nil {
		t.Fatal(err)
	}
	more, err := pc.ReadPacket()
	if err != nil || len(more) != 2 || more[0] != mysql.MORE_DATE_HEADER || more[1] != 4 {
		t.Fatalf("want full authentication to be requested, got %q %v", more, err)
	}
	if err := pc.WritePacket([]byte{0, 0, 0, 0, 2}); err != nil { // the server's RSA key, please
		t.Fatal(err)
	}
	key, err := pc.ReadPacket()
	if err != nil || len(key) < 2 || key[0] != mysql.MORE_DATE_HEADER {
		t.Fatalf("want the RSA public key, got %q %v", key, err)
	}
	block, _ := pem.Decode(key[1:])
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.WriteEncryptedPassword("pw-s", nonce, pub.(*rsa.PublicKey)); err != nil {
		t.Fatal(err)
	}
	ok, err := pc.ReadPacket()
	if err != nil || len(ok) == 0 || ok[0] != mysql.OK_HEADER {
		t.Fatalf("want OK after full authentication, got %q %v", ok, err)
	}
}
