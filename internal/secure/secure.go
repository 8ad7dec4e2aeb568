// Package secure is how Flotilla's network surfaces authenticate: TLS settings built
// from certificate files, and the one admin check (a verified client certificate or
// the bearer token) that both the admin API and the cluster service apply.
//
// Invariants: when a client CA is configured, a caller without a certificate signed
// by it and without the token is refused; a token is compared in constant time.
package secure

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Files names a CA certificate and this side's certificate and key (PEM).
type Files struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Enabled reports whether any file is set.
func (f Files) Enabled() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// Check refuses an incomplete set: a certificate without its key, or no CA.
func (f Files) Check(what string) error {
	if !f.Enabled() {
		return nil
	}
	if f.CA == "" || f.Cert == "" || f.Key == "" {
		return fmt.Errorf("%s: give all three of the CA, certificate and key files (got ca=%q cert=%q key=%q)", what, f.CA, f.Cert, f.Key)
	}
	return nil
}

func (f Files) pool() (*x509.CertPool, error) {
	b, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", f.CA)
	}
	return p, nil
}

// ServerConfig serves f's certificate and verifies client certificates signed by
// f's CA when clients present one (callers then decide, with Admin, whether a
// certificate is required).
func (f Files) ServerConfig() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s and key %s: %w", f.Cert, f.Key, err)
	}
	p, err := f.pool()
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: p, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12}, nil
}

// ClientConfig trusts f's CA and presents f's certificate when there is one.
func (f Files) ClientConfig() (*tls.Config, error) {
	p, err := f.pool()
	if err != nil {
		return nil, err
	}
	c := &tls.Config{RootCAs: p, MinVersion: tls.VersionTLS12}
	if f.Cert != "" {
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("load certificate %s and key %s: %w", f.Cert, f.Key, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// GRPCCredentials are the transport credentials to dial another node's or the admin
// API with: TLS from cfg, plaintext when cfg is nil.
func GRPCCredentials(cfg *tls.Config) credentials.TransportCredentials {
	if cfg == nil {
		return insecure.NewCredentials()
	}
	return credentials.NewTLS(cfg)
}

// Admin is the admin check: who may manage the cluster.
type Admin struct {
	// Token, when set, is accepted as "authorization: Bearer TOKEN".
	Token string
	// Certificates: a client certificate verified against the server's CA is
	// accepted, and a caller with neither it nor the token is refused.
	Certificates bool
}

// Check authenticates the caller of a gRPC call.
func (a Admin) Check(ctx context.Context) error {
	if a.Certificates && VerifiedPeer(ctx) {
		return nil
	}
	if a.Token == "" && !a.Certificates {
		return nil // a loopback-only admin port without credentials (checked at start)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	got := strings.TrimPrefix(strings.Join(md.Get("authorization"), ""), "Bearer ")
	if a.Token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(a.Token)) == 1 {
		return nil
	}
	switch {
	case a.Token != "" && a.Certificates:
		return status.Error(codes.Unauthenticated, "admin call refused: present a client certificate signed by the cluster's CA (--tls-ca/--tls-cert/--tls-key) or the admin token (FLOTILLA_TOKEN)")
	case a.Certificates:
		return status.Error(codes.Unauthenticated, "admin call refused: present a client certificate signed by the cluster's CA (--tls-ca/--tls-cert/--tls-key)")
	}
	return status.Error(codes.Unauthenticated, "admin call refused: missing or wrong admin token (set FLOTILLA_TOKEN)")
}

// VerifiedPeer reports whether the caller presented a certificate the server
// verified against its CA.
func VerifiedPeer(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	return ok && len(ti.State.VerifiedChains) > 0
}

// ErrOpenAdmin is why a node refuses to start with an unprotected admin API that
// the network can reach.
var ErrOpenAdmin = errors.New("the admin API would accept anyone")

// Loopback reports whether a listen address (HOST:PORT) is reachable only from this
// machine.
func Loopback(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}

// CheckAdminExposure refuses an admin listen address off the loopback without
// client certificates (TLS): with neither, anyone reaching it could remove
// upstreams; with a token alone, the token crosses the network in clear.
// insecure accepts the token alone, for a network the operator trusts.
func CheckAdminExposure(addr string, a Admin, insecure bool) error {
	lo, err := Loopback(addr)
	if err != nil || lo || a.Certificates {
		return err
	}
	if a.Token == "" {
		return fmt.Errorf("admin address %s is not a loopback address and %w: set --tls-ca/--tls-cert/--tls-key (callers then need a client certificate or the token over TLS), or listen on 127.0.0.1", addr, ErrOpenAdmin)
	}
	if !insecure {
		return fmt.Errorf("admin address %s is not a loopback address and has no TLS: the admin token would cross the network in clear; set --tls-ca/--tls-cert/--tls-key, or --insecure-admin on a network you trust", addr)
	}
	return nil
}

// CheckRaftExposure refuses a raft address off the loopback without node TLS:
// dragonboat authenticates peers only by the deployment id, which anyone can learn,
// so anyone reaching the port could inject raft entries and snapshots (rewrite
// upstreams, replica users, node addresses). insecure accepts it, for a network the
// operator trusts.
func CheckRaftExposure(addr string, nodeTLS, insecure bool) error {
	lo, err := Loopback(addr)
	if err != nil || lo || nodeTLS || insecure {
		return err
	}
	return fmt.Errorf("raft address %s is not a loopback address and node TLS is off: anyone reaching it could write the cluster's metadata; set --tls-ca/--tls-cert/--tls-key on every node, or --insecure-raft on a network you trust", addr)
}
