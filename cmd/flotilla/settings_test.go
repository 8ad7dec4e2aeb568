package main

import (
	"strings"
	"testing"
)

// TestTuneDragonboat: the linknamed variables are dragonboat's own (they hold its
// defaults when main starts; separate variables would hold 0), and tuning sets them.
func TestTuneDragonboat(t *testing.T) {
	got := tuneDragonboat()
	if !strings.HasPrefix(got, "receive queue 64,") {
		t.Fatalf("dragonboat not tuned: %s", got)
	}
	if again := tuneDragonboat(); !strings.Contains(again, "left as they are") {
		t.Fatalf("tuned values were taken for dragonboat's defaults: %s", again)
	}
}
