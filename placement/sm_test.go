package placement

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	sm "github.com/lni/dragonboat/v3/statemachine"
)

func apply(t *testing.T, m sm.IStateMachine, c command) sm.Result {
	t.Helper()
	b, _ := json.Marshal(c)
	r, err := m.Update(b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestGroupIDsAreNeverReused(t *testing.T) {
	m := newMetaSM(1, 1)
	for id, zone := range map[uint64]string{1: "a", 2: "a", 3: "b", 4: "c"} {
		apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: id, Labels: map[string]string{"zone": zone}}})
	}
	add := func(name string) *Upstream {
		r := apply(t, m, command{Op: opAddUpstream, Upstream: &Upstream{Name: name, Source: "h:1", Replicas: 3}})
		if r.Value != resultOK {
			t.Fatalf("add %s refused: %s", name, r.Data)
		}
		var u Upstream
		json.Unmarshal(r.Data, &u)
		return &u
	}
	a := add("a")
	if r := apply(t, m, command{Op: opAddUpstream, Upstream: &Upstream{Name: "a", Source: "h:1", Replicas: 1}}); r.Value != resultRefused {
		t.Fatal("a duplicate name must be refused")
	}
	if r := apply(t, m, command{Op: opAddUpstream, Upstream: &Upstream{Name: "bad name", Source: "h:1", Replicas: 1}}); r.Value != resultRefused {
		t.Fatal("a name with a space must be refused")
	}
	apply(t, m, command{Op: opRemoveUpstream, Name: "a"})
	b := add("a")
	if b.GroupID == a.GroupID || a.GroupID < 2 {
		t.Fatalf("group ids %d then %d: ids must never be reused (and 1 is the metadata group)", a.GroupID, b.GroupID)
	}
	st, _ := m.Lookup(nil)
	nodes := st.(*State).Assignments[b.GroupID]
	zones := map[string]bool{}
	for _, n := range nodes {
		zones[st.(*State).Nodes[n].Labels["zone"]] = true
	}
	if len(nodes) != 3 || len(zones) != 3 {
		t.Fatalf("replicas on nodes %v span zones %v: want 3 nodes in 3 zones", nodes, zones)
	}
	if r := apply(t, m, command{Op: opRemoveUpstream, Name: "nope"}); r.Value != resultNotFound || !bytes.Contains(r.Data, []byte("unknown upstream")) {
		t.Fatalf("removing an unknown upstream: %s", r.Data)
	}

	var buf bytes.Buffer
	if err := m.SaveSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	m2 := newMetaSM(1, 2)
	if err := m2.RecoverFromSnapshot(&buf, nil, nil); err != nil {
		t.Fatal(err)
	}
	st2, _ := m2.Lookup(nil)
	if st2.(*State).NextGroupID != st.(*State).NextGroupID || len(st2.(*State).Upstreams) != 1 {
		t.Fatal("snapshot did not restore the metadata")
	}
}

func TestViewSeesTheStateAndReadsCopyIt(t *testing.T) {
	m := newMetaSM(1, 1).(*metaSM)
	apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: 1}})
	apply(t, m, command{Op: opAddUpstream, Upstream: &Upstream{Name: "a", Source: "h:1", Replicas: 1}})
	var seen *State
	var names []string
	if v, err := m.Lookup(viewQuery(func(st *State) { seen, names = st, st.UpstreamNames() })); err != nil || v != nil {
		t.Fatalf("a view returns nothing: %v, %v", v, err)
	}
	if seen != m.state || !slices.Equal(names, []string{"a"}) {
		t.Fatalf("the view ran on %p (state %p) and saw %v", seen, m.state, names)
	}
	c, _ := m.Lookup(nil)
	c.(*State).Upstreams["a"].Source = "changed:1"
	delete(c.(*State).Upstreams, "a")
	if u := m.state.Upstreams["a"]; u == nil || u.Source != "h:1" {
		t.Fatal("changing what Lookup returned changed the state: it must be a copy")
	}
}

func TestMembershipChangesAreComparedAndSet(t *testing.T) {
	m := newMetaSM(1, 1)
	for id := uint64(1); id <= 4; id++ {
		apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: id}})
	}
	if r := apply(t, m, command{Op: opAddUpstream, Upstream: &Upstream{Name: "a", Source: "h:1", Replicas: 3}}); r.Value != resultOK {
		t.Fatalf("add: %s", r.Data)
	}
	st := m.(*metaSM).state
	if got := st.Assignments[2]; !slices.Equal(got, []uint64{1, 2, 3}) || !st.IsInitial(2, 1) {
		t.Fatalf("assignment %v, initial %v", got, st.Initial[2])
	}
	if r := apply(t, m, command{Op: opSetMembers, Group: 2, Expect: []uint64{1, 2}, Members: []uint64{1, 2, 4}}); r.Value != resultRefused {
		t.Fatal("a change decided on a stale view must be refused")
	}
	if r := apply(t, m, command{Op: opSetMembers, Group: 2, Expect: []uint64{1, 2, 3}, Members: []uint64{1, 2, 3, 4}, Note: "add 4"}); r.Value != resultOK {
		t.Fatalf("set members: %s", r.Data)
	}
	if st.IsInitial(2, 4) || len(st.Decisions) != 1 {
		t.Fatalf("node 4 joined later: initial %v, decisions %v", st.Initial[2], st.Decisions)
	}
	if r := apply(t, m, command{Op: opRemoveNode, NodeID: 4}); r.Value != resultRefused || !bytes.Contains(r.Data, []byte("still holds replicas of groups 2")) {
		t.Fatalf("removing a node that holds replicas must be refused naming them: %s", r.Data)
	}
	apply(t, m, command{Op: opSetMembers, Group: 2, Expect: []uint64{1, 2, 3, 4}, Members: []uint64{1, 2, 3}})
	// Raft never readmits a removed replica id: node 4's next replica of the group
	// gets a new incarnation, still mapping back to node 4.
	apply(t, m, command{Op: opSetMembers, Group: 2, Expect: []uint64{1, 2, 3}, Members: []uint64{1, 2, 3, 4}})
	if rid := st.ReplicaID(2, 4); rid != 4+1<<NodeIDBits || NodeOfReplica(rid) != 4 || st.ReplicaID(2, 1) != 1 {
		t.Fatalf("replica ids after re-adding node 4: %v", st.ReplicaIDs[2])
	}
	apply(t, m, command{Op: opSetMembers, Group: 2, Expect: []uint64{1, 2, 3, 4}, Members: []uint64{1, 2, 3}})
	if r := apply(t, m, command{Op: opRemoveNode, NodeID: 4}); r.Value != resultOK {
		t.Fatalf("remove an empty node: %s", r.Data)
	}
}

// TestNodeKeyRotation: a rotation adds exactly the generation after the active one,
// one at a time; activating it retires the older ones; anything else is refused,
// so two operators rotating at once cannot leave members with different keys.
func TestNodeKeyRotation(t *testing.T) {
	m := newMetaSM(1, 1)
	add := func(gen uint64) uint64 {
		return apply(t, m, command{Op: opAddNodeKey, NodeKey: &SealedNodeKey{Gen: gen, Sealed: "sealed:v1:x"}}).Value
	}
	activate := func(gen uint64) uint64 { return apply(t, m, command{Op: opActivateKey, KeyGen: gen}).Value }
	if add(2) != resultRefused || add(0) != resultRefused {
		t.Fatal("only the generation after the active one may be added")
	}
	if add(1) != resultOK || add(2) != resultRefused {
		t.Fatal("a second rotation must wait for the first")
	}
	if activate(2) != resultRefused || activate(1) != resultOK || activate(1) != resultRefused {
		t.Fatal("only the pending generation may be activated, once")
	}
	st := m.(*metaSM).state
	if st.ActiveNodeKey != 1 || len(st.NodeKeys) != 1 || st.NodeKeys[0].Gen != 1 {
		t.Fatalf("after activation: active %d, keys %+v", st.ActiveNodeKey, st.NodeKeys)
	}
	if _, ok := st.PendingNodeKey(); ok {
		t.Fatal("nothing is pending after activation")
	}
	if add(2) != resultOK {
		t.Fatal("the next rotation adds generation 2")
	}
	// Removing a node drops a pending key (the node has seen it); the next
	// rotation takes a fresh generation, never the dropped one's number.
	apply(t, m, command{Op: opRegisterNode, Node: &Node{ID: 9}})
	if r := apply(t, m, command{Op: opRemoveNode, NodeID: 9}); r.Value != resultOK {
		t.Fatalf("remove node: %s", r.Data)
	}
	if _, ok := st.PendingNodeKey(); ok || activate(2) != resultRefused {
		t.Fatal("a node's removal must drop the pending key")
	}
	if add(2) != resultRefused || add(3) != resultOK || activate(3) != resultOK {
		t.Fatal("after a dropped generation 2, the next rotation is generation 3")
	}
}
