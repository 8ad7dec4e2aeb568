package placement

import (
	"testing"
	"time"
)

// TestSwitchSourceIsCompareAndSet: a switch decided for a source that changed
// meanwhile (an operator's repoint racing the automatic selection) is refused, and
// every switch is recorded with the upstream, the latest ones kept.
func TestSwitchSourceIsCompareAndSet(t *testing.T) {
	m := newMetaSM(1, 1)
	apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: 1}})
	if r := apply(t, m, command{Op: opAddUpstream, Upstream: &Upstream{Name: "u", Source: "a:1", Replicas: 1, Candidates: []string{"b:1", "b:1"}}}); r.Value != resultRefused {
		t.Fatal("a candidate listed twice must be refused")
	}
	apply(t, m, command{Op: opAddUpstream, Upstream: &Upstream{Name: "u", Source: "a:1", Replicas: 1, Candidates: []string{"a:1", "b:1"}}})
	sw := func(from, to string) uint64 {
		return apply(t, m, command{Op: opSwitchSource, Name: "u", Switch: &SourceSwitch{At: time.Unix(1, 0), From: from, To: to, Reason: "test"}, Note: "n"}).Value
	}
	if r := sw("a:1", "b:1"); r != resultOK {
		t.Fatalf("switch a->b: result %d", r)
	}
	if r := sw("a:1", "c:1"); r != resultRefused {
		t.Fatalf("a second switch decided for a:1 after the source became b:1: result %d, want refused", r)
	}
	if r := sw("b:1", "not-an-address"); r != resultRefused {
		t.Fatalf("a switch to a bad address: result %d, want refused", r)
	}
	for i := 0; i < maxSwitches+5; i++ {
		from, to := "b:1", "a:1"
		if i%2 == 1 {
			from, to = to, from
		}
		if r := sw(from, to); r != resultOK {
			t.Fatalf("switch %d: result %d", i, r)
		}
	}
	st, _ := m.Lookup(nil)
	u := st.(*State).Upstreams["u"]
	if len(u.Switches) != maxSwitches || u.Switches[len(u.Switches)-1].To != u.Source {
		t.Fatalf("switches %d (want %d), last to %s, source %s", len(u.Switches), maxSwitches, u.Switches[len(u.Switches)-1].To, u.Source)
	}
	if u.DownAfter() != DefaultSourceDownAfter {
		t.Fatalf("default down-after %v", u.DownAfter())
	}
	if r := apply(t, m, command{Op: opSetCandidates, Name: "u", Candidates: []string{"c:1"}, DownAfter: 3 * time.Second}); r.Value != resultOK {
		t.Fatalf("set candidates: %s", r.Data)
	}
	st, _ = m.Lookup(nil)
	if u := st.(*State).Upstreams["u"]; len(u.Candidates) != 1 || u.DownAfter() != 3*time.Second {
		t.Fatalf("after set-candidates: %v %v", u.Candidates, u.DownAfter())
	}
}
