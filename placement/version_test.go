package placement

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func stateJSON(t *testing.T, m *metaSM) []byte {
	t.Helper()
	b, err := json.Marshal(m.state)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A command of a newer cluster version waits until every node understands it: until
// then it is refused and changes nothing (as a node of the older release, which does
// not know the command, refuses it), so the metadata is the same on every member of
// a mixed-version cluster.
func TestNewCommandWaitsForEveryNode(t *testing.T) {
	m := newMetaSM(1, 1).(*metaSM)
	// Node 1 predates cluster versions (it registers none); 2 and 3 understand 2.
	apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: 1}})
	for id := uint64(2); id <= 3; id++ {
		apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: id, Version: "0.29.0", MaxClusterVersion: 2}})
	}
	if r := apply(t, m, command{Op: opAddUpstream, Upstream: &Upstream{Name: "a", Source: "h:1", Replicas: 3}}); r.Value != resultOK {
		t.Fatalf("add: %s", r.Data)
	}
	if v := m.state.Version(); v != 1 {
		t.Fatalf("a cluster that never moved is at version %d, want 1", v)
	}
	before := stateJSON(t, m)
	upd := command{Op: opUpdateUpstream, Name: "a", Change: &UpstreamChange{Replicas: 2}}
	r := apply(t, m, upd)
	if r.Value != resultRefused || !strings.Contains(string(r.Data), "needs cluster version 2") || !strings.Contains(string(r.Data), "node 1 (unknown") {
		t.Fatalf("update_upstream at cluster version 1: %d %s", r.Value, r.Data)
	}
	if after := stateJSON(t, m); !bytes.Equal(before, after) {
		t.Fatalf("a refused command changed the metadata:\n%s\n%s", before, after)
	}
	mixed := map[uint64]uint32{1: 1, 2: 2, 3: 2}
	if r := apply(t, m, command{Op: opSetClusterVersion, ClusterVersion: 2, Versions: mixed}); r.Value != resultRefused || !strings.Contains(string(r.Data), "node 1") {
		t.Fatalf("moving to 2 while node 1 cannot read it: %d %s", r.Value, r.Data)
	}
	// Node 1 is upgraded: it registers again at its start.
	apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: 1, Version: "0.29.0", MaxClusterVersion: 2}})
	if got := m.state.Reachable(); got != 2 {
		t.Fatalf("reachable version %d, want 2", got)
	}
	all := map[uint64]uint32{1: 2, 2: 2, 3: 2}
	if r := apply(t, m, command{Op: opSetClusterVersion, ClusterVersion: 2, Versions: map[uint64]uint32{1: 2, 2: 2}}); r.Value != resultRefused {
		t.Fatal("a move proposed without one node's report must be refused")
	}
	// A member whose record of node 1 lost the version (a snapshot from an older
	// release) decides as the others do: on what the command carries.
	m.state.Nodes[1].MaxClusterVersion = 0
	if r := apply(t, m, command{Op: opSetClusterVersion, ClusterVersion: 2, Versions: all, Note: "finalized"}); r.Value != resultOK {
		t.Fatalf("finalize: %s", r.Data)
	}
	if m.state.Nodes[1].MaxClusterVersion != 2 {
		t.Fatal("the carried versions must replace the recorded ones")
	}
	if r := apply(t, m, command{Op: opSetClusterVersion, ClusterVersion: 2, Versions: all}); r.Value != resultRefused {
		t.Fatal("the cluster version moves forward once: a second move to 2 must be refused")
	}
	if r := apply(t, m, upd); r.Value != resultOK || m.state.Upstreams["a"].Replicas != 2 {
		t.Fatalf("update_upstream at cluster version 2: %d %s", r.Value, r.Data)
	}
	// A binary that cannot read version 2 may not (re)join; one that can may
	// restart with an older release of the same cluster version (a downgrade).
	r = apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: 4}})
	if r.Value != resultRefused || !strings.Contains(string(r.Data), "install a release that understands 2") {
		t.Fatalf("registering a release before cluster versions at version 2: %d %s", r.Value, r.Data)
	}
	if r := apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: 3, Version: "0.29.0-rc1", MaxClusterVersion: 2}}); r.Value != resultOK {
		t.Fatalf("a downgrade within the cluster version: %s", r.Data)
	}
	// The version survives a snapshot.
	var buf bytes.Buffer
	if err := m.SaveSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	m2 := newMetaSM(1, 2).(*metaSM)
	if err := m2.RecoverFromSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	if m2.state.Version() != 2 || m2.state.Nodes[1].MaxClusterVersion != 2 {
		t.Fatalf("after a snapshot: cluster version %d, node 1 understands %d", m2.state.Version(), m2.state.Nodes[1].MaxClusterVersion)
	}
}

func TestUpdateUpstreamValidates(t *testing.T) {
	m := newMetaSM(1, 1).(*metaSM)
	for id := uint64(1); id <= 3; id++ {
		apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: id, MaxClusterVersion: 2}})
	}
	apply(t, m, command{Op: opSetClusterVersion, ClusterVersion: 2, Versions: map[uint64]uint32{1: 2, 2: 2, 3: 2}})
	apply(t, m, command{Op: opAddUpstream, Upstream: &Upstream{Name: "a", Source: "h:1", Replicas: 3}})
	for _, tc := range []struct {
		c    command
		want string
	}{
		{command{Op: opUpdateUpstream, Name: "b", Change: &UpstreamChange{Replicas: 1}}, "unknown upstream"},
		{command{Op: opUpdateUpstream, Name: "a", Change: &UpstreamChange{Replicas: 4}}, "the cluster has 3 nodes"},
		{command{Op: opUpdateUpstream, Name: "a", Change: &UpstreamChange{ReplicaUsers: []ReplicaUser{{User: "r"}, {User: "r"}}}}, "given twice"},
		{command{Op: opUpdateUpstream, Name: "a"}, "no change"},
	} {
		if r := apply(t, m, tc.c); r.Value == resultOK || !strings.Contains(string(r.Data), tc.want) {
			t.Errorf("%+v: %d %q, want a refusal saying %q", tc.c, r.Value, r.Data, tc.want)
		}
	}
	r := apply(t, m, command{Op: opUpdateUpstream, Name: "a", Change: &UpstreamChange{ReplicaUsers: []ReplicaUser{{User: "r2", Hash: "x"}}}})
	if u := m.state.Upstreams["a"]; r.Value != resultOK || len(u.ReplicaUsers) != 1 || u.ReplicaUsers[0].User != "r2" || u.Replicas != 3 {
		t.Fatalf("replacing the users: %s %+v", r.Data, u)
	}
}
