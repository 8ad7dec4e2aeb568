package shard

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"

	"github.com/flotilla-relay/flotilla/placement"
)

// sourceTLSConfig is the TLS configuration toward a master at addr (nil: plaintext).
// The master's certificate is always verified: against the upstream's CA when it
// has one, else the system's roots, for ServerName or else the host of addr.
func sourceTLSConfig(addr string, t *placement.SourceTLS) (*tls.Config, error) {
	if t == nil {
		return nil, nil
	}
	name := t.ServerName
	if name == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("source %q is not HOST:PORT: %w", addr, err)
		}
		name = host
	}
	cfg := &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12}
	if t.CAPEM != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(t.CAPEM)) {
			return nil, fmt.Errorf("the upstream's TLS CA holds no PEM certificate")
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}
