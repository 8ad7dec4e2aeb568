package secure

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
)

func TestSealer(t *testing.T) {
	s, err := NewSealer([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := s.Seal("hunter2", "main")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(sealed, "hunter2") {
		t.Fatal("the sealed value shows the password")
	}
	if got, err := s.Open(sealed, "main"); err != nil || got != "hunter2" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := s.Open(sealed, "other"); err == nil {
		t.Fatal("a value sealed for one upstream must not open for another")
	}
	other, _ := NewSealer([]byte("another cluster's secret, 32 b.."))
	if _, err := other.Open(sealed, "main"); err == nil {
		t.Fatal("another cluster's key must not open the value")
	}
	if _, err := s.Open("plain", "main"); err == nil {
		t.Fatal("an unsealed value must be refused")
	}
}

func TestAdminCheckAndExposure(t *testing.T) {
	withToken := func(tok string) context.Context {
		return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
	}
	a := Admin{Token: "t0ken"}
	if err := a.Check(withToken("t0ken")); err != nil {
		t.Fatalf("the right token: %v", err)
	}
	if err := a.Check(withToken("wrong")); err == nil {
		t.Fatal("a wrong token must be refused")
	}
	if err := (Admin{Certificates: true}).Check(context.Background()); err == nil {
		t.Fatal("without a certificate, a certificate-only API must refuse")
	}
	if err := (Admin{}).Check(context.Background()); err != nil {
		t.Fatalf("an open loopback API accepts: %v", err)
	}
	for addr, lo := range map[string]bool{"127.0.0.1:7070": true, "127.0.0.9:7070": true, "[::1]:7070": true, "localhost:7070": true, "0.0.0.0:7070": false, "10.0.0.5:7070": false} {
		if err := CheckAdminExposure(addr, Admin{}, false); (err == nil) != lo {
			t.Errorf("%s without credentials: %v", addr, err)
		}
		// A token without TLS crosses the network in clear: only on loopback,
		// or when the operator says the network is trusted.
		if err := CheckAdminExposure(addr, Admin{Token: "x"}, false); (err == nil) != lo {
			t.Errorf("%s with a token and no TLS: %v", addr, err)
		}
		if err := CheckAdminExposure(addr, Admin{Token: "x"}, true); err != nil {
			t.Errorf("%s with a token and --insecure-admin: %v", addr, err)
		}
		if err := CheckAdminExposure(addr, Admin{Certificates: true}, false); err != nil {
			t.Errorf("%s with TLS: %v", addr, err)
		}
		if err := CheckRaftExposure(addr, false, false); (err == nil) != lo {
			t.Errorf("raft at %s without TLS: %v", addr, err)
		}
		if err := CheckRaftExposure(addr, true, false); err != nil {
			t.Errorf("raft at %s with TLS: %v", addr, err)
		}
		if err := CheckRaftExposure(addr, false, true); err != nil {
			t.Errorf("raft at %s with --insecure-raft: %v", addr, err)
		}
	}
}
