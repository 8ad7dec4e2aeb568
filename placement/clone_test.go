package placement

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// fullState returns a state in which every field, at every depth, is set: a field
// added later and left out of Clone then fails TestCloneSharesNothing.
func fullState(t *testing.T) *State {
	t.Helper()
	d := uint32(4)
	s := newState()
	s.Nodes[1] = &Node{ID: 1, RaftAddr: "r", MySQLAddr: "m", AdminAddr: "a", Labels: map[string]string{"zone": "a"}, Draining: true,
		Version: "1", Commit: "c", MaxClusterVersion: 2}
	s.Upstreams["u"] = &Upstream{Name: "u", Flavor: "mariadb", Source: "s:1", User: "x", Password: "p",
		ReplicaUsers: []ReplicaUser{{User: "r", Plugin: "p", Hash: "h", RequireTLS: true, Password: "pw"}},
		SourceTLS:    &SourceTLS{CAPEM: "ca", ServerName: "sn"}, ServerID: 1, DomainID: 2, ServerUUID: "uuid", Version: "v", BinlogChecksum: "CRC32",
		StartGTID: "0-1-1", InitialBytes: 5, SemiSync: "auto", InitialGTID: "0-1-2", Candidates: []string{"c:1"}, SourceDownAfter: time.Second,
		Switches: []SourceSwitch{{At: time.Unix(5, 0).UTC(), From: "a", To: "b", Reason: "r", Forced: true, Warning: "w", ServerID: 3, DomainID: &d,
			Version: "v", BinlogChecksum: "NONE", FromServerID: 1}},
		AddWarnings: []string{"w"}, GroupID: 2, Replicas: 3, SyncerServerID: 9, ServeFrom: ServeFromAny, Paused: true, CreatedAt: time.Unix(7, 0).UTC()}
	s.Assignments[2] = []uint64{1, 2}
	s.Initial[2] = []uint64{1}
	s.ReplicaIDs[2] = map[uint64]uint64{1: 1}
	s.NextGroupID = 3
	s.Decisions = []string{"d"}
	s.NodeKeys = []SealedNodeKey{{Gen: 1, Sealed: "k"}}
	s.ActiveNodeKey, s.LastNodeKeyGen, s.ClusterVersion = 1, 1, 2
	mustBeFull(t, reflect.ValueOf(s).Elem(), "State")
	return s
}

// mustBeFull fails on any zero field under v.
func mustBeFull(t *testing.T, v reflect.Value, path string) {
	t.Helper()
	if v.IsZero() {
		t.Fatalf("%s is not set in the fixture: set it (and copy it in Clone if it holds a pointer, slice or map)", path)
	}
	switch v.Kind() {
	case reflect.Pointer:
		mustBeFull(t, v.Elem(), path)
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			return
		}
		for i := range v.NumField() {
			mustBeFull(t, v.Field(i), path+"."+v.Type().Field(i).Name)
		}
	case reflect.Slice:
		for i := range v.Len() {
			mustBeFull(t, v.Index(i), path+"[]")
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			mustBeFull(t, v.MapIndex(k), path+"[]")
		}
	}
}

// shared reports the first pointer, slice or map the two values have in common.
func shared(a, b reflect.Value, path string) string {
	switch a.Kind() {
	case reflect.Pointer:
		if a.Pointer() == b.Pointer() {
			return path
		}
		return shared(a.Elem(), b.Elem(), path)
	case reflect.Struct:
		if a.Type() == reflect.TypeOf(time.Time{}) {
			return "" // its *Location is immutable
		}
		for i := range a.NumField() {
			if p := shared(a.Field(i), b.Field(i), path+"."+a.Type().Field(i).Name); p != "" {
				return p
			}
		}
	case reflect.Slice:
		if a.Len() > 0 && a.Pointer() == b.Pointer() {
			return path
		}
		for i := range a.Len() {
			if p := shared(a.Index(i), b.Index(i), path+"[]"); p != "" {
				return p
			}
		}
	case reflect.Map:
		if a.Pointer() == b.Pointer() {
			return path
		}
		for _, k := range a.MapKeys() {
			if p := shared(a.MapIndex(k), b.MapIndex(k), path+"[]"); p != "" {
				return p
			}
		}
	}
	return ""
}

// TestCloneSharesNothing: a copy of the state equals it (as the JSON that snapshots
// store) and shares no memory with it, so a reader's copy never changes under it.
func TestCloneSharesNothing(t *testing.T) {
	s := fullState(t)
	c := s.Clone()
	a, _ := json.Marshal(s)
	b, _ := json.Marshal(c)
	if string(a) != string(b) {
		t.Fatalf("the copy differs:\n%s\n%s", a, b)
	}
	if p := shared(reflect.ValueOf(s), reflect.ValueOf(c), "State"); p != "" {
		t.Fatalf("the copy shares %s with the state", p)
	}
}
