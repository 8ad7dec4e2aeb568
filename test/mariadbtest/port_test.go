package mariadbtest

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPortReservation: a reserved port is refused to the next caller until its
// lease expires; FreePort's ports are all distinct while their leases run.
func TestPortReservation(t *testing.T) {
	dir := t.TempDir()
	if !reservePort(dir, 12345) {
		t.Fatal("a fresh port could not be reserved")
	}
	if reservePort(dir, 12345) {
		t.Fatal("a reserved port was reserved a second time")
	}
	old := time.Now().Add(-portLease - time.Minute)
	if err := os.Chtimes(filepath.Join(dir, "12345"), old, old); err != nil {
		t.Fatal(err)
	}
	if !reservePort(dir, 12345) {
		t.Fatal("an expired reservation was not taken anew")
	}
	if reservePort(dir, 12345) {
		t.Fatal("a renewed reservation was reserved a second time")
	}

	seen := map[int]bool{}
	for range 300 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("FreePort handed out port %d twice", p)
		}
		seen[p] = true
	}
}
