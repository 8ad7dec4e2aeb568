package mariadbtest

import "testing"

// TestPortReservation: a reserved port is refused to the next caller, this process
// included, and FreePort's ports are all distinct, below the ephemeral range.
func TestPortReservation(t *testing.T) {
	dir := t.TempDir()
	if ok, err := reservePort(dir, 12345); !ok || err != nil {
		t.Fatalf("a fresh port could not be reserved: %v", err)
	}
	if ok, err := reservePort(dir, 12345); ok || err != nil {
		t.Fatalf("a reserved port was reserved a second time (%v)", err)
	}
	lo, hi := drawRange()
	if lo != 10000 || hi < lo+1000 || hi > 32768 {
		t.Fatalf("FreePort draws from [%d, %d): want 10000 up to the ephemeral range, at most 32768", lo, hi)
	}
	seen := map[int]bool{}
	for range 50 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if p < lo || p >= hi {
			t.Fatalf("FreePort drew %d outside [%d, %d)", p, lo, hi)
		}
		if seen[p] {
			t.Fatalf("FreePort handed out port %d twice", p)
		}
		seen[p] = true
	}
}
