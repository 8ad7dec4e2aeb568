package mariadbtest

import "testing"

// TestPortReservation: a reserved port is refused to the next caller, this process
// included, and FreePort's ports are all distinct.
func TestPortReservation(t *testing.T) {
	dir := t.TempDir()
	if ok, err := reservePort(dir, 12345); !ok || err != nil {
		t.Fatalf("a fresh port could not be reserved: %v", err)
	}
	if ok, err := reservePort(dir, 12345); ok || err != nil {
		t.Fatalf("a reserved port was reserved a second time (%v)", err)
	}
	seen := map[int]bool{}
	for range 50 {
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
