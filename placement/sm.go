package placement

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lni/dragonboat/v3"
	sm "github.com/lni/dragonboat/v3/statemachine"

	"github.com/flotilla-relay/flotilla/internal/raftprop"
)

// command is a metadata change; JSON keeps the raft log readable by a human.
type command struct {
	Op       string    `json:"op"`
	Node     *Node     `json:"node,omitempty"`
	Upstream *Upstream `json:"upstream,omitempty"`
	Name     string    `json:"name,omitempty"`
	Paused   bool      `json:"paused,omitempty"`
	// Group, Members and Expect change a group's assignment (compare and set: a
	// decision taken on a stale view is refused); NodeID and Draining a node.
	Group    uint64   `json:"group,omitempty"`
	Members  []uint64 `json:"members,omitempty"`
	Expect   []uint64 `json:"expect,omitempty"`
	NodeID   uint64   `json:"node_id,omitempty"`
	Draining bool     `json:"draining,omitempty"`
	// Switch changes an upstream's source; Candidates and DownAfter its candidate
	// sources (see SourceSwitch).
	Switch     *SourceSwitch `json:"switch,omitempty"`
	Candidates []string      `json:"candidates,omitempty"`
	DownAfter  time.Duration `json:"down_after,omitempty"`
	// Note is recorded in State.Decisions (with the proposer's time: apply must be
	// deterministic).
	Note string `json:"note,omitempty"`
	// NodeKey is a rotation's new node key; KeyGen the generation to activate.
	NodeKey *SealedNodeKey `json:"node_key,omitempty"`
	KeyGen  uint64         `json:"key_gen,omitempty"`
	// ClusterVersion is the version set_cluster_version moves to, and Versions what
	// each node's running binary understands, as the proposer saw it; Change what
	// update_upstream changes.
	ClusterVersion uint32            `json:"cluster_version,omitempty"`
	Versions       map[uint64]uint32 `json:"versions,omitempty"`
	Change         *UpstreamChange   `json:"change,omitempty"`
}

const (
	opRegisterNode   = "register_node"
	opAddUpstream    = "add_upstream"
	opRemoveUpstream = "remove_upstream"
	opSetPaused      = "set_paused"
	opSetMembers     = "set_members"
	opSetDraining    = "set_draining"
	opRemoveNode     = "remove_node"
	opNote           = "note"
	opSwitchSource   = "switch_source"
	opSetCandidates  = "set_candidates"
	opAddNodeKey     = "add_node_key"
	opActivateKey    = "activate_node_key"
	// Cluster version 2.
	opSetClusterVersion = "set_cluster_version"
	opUpdateUpstream    = "update_upstream"
)

// Result codes of metadata commands.
const (
	resultOK       uint64 = 1
	resultRefused  uint64 = 2
	resultNotFound uint64 = 3 // refused: what the command names does not exist
)

// metaSM is the metadata state machine. Its state is small (one entry per node and
// upstream), so it lives in memory and dragonboat snapshots it as JSON.
type metaSM struct {
	mu    sync.RWMutex
	state *State
	// version counts applied commands and recovered snapshots: readers that only
	// need to know whether anything changed ask for it instead of a copy.
	version uint64
}

// versionQuery asks Lookup for the metadata's version instead of a copy of it.
type versionQuery struct{}

// newMetaSM is the dragonboat CreateStateMachineFunc of the metadata group.
func newMetaSM(uint64, uint64) sm.IStateMachine { return &metaSM{state: newState()} }

func (m *metaSM) Update(data []byte) (sm.Result, error) {
	var c command
	if err := json.Unmarshal(data, &c); err != nil {
		return refuse("malformed metadata command: %v", err), nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.version++
	s := m.state
	if r, ok := s.gate(c.Op); !ok {
		return r, nil
	}
	switch c.Op {
	case opRegisterNode:
		return s.register(c.Node), nil
	case opSetClusterVersion:
		return s.setClusterVersion(c), nil
	case opUpdateUpstream:
		return s.updateUpstream(c), nil
	case opAddUpstream:
		u := c.Upstream
		if u == nil {
			return refuse("no upstream given"), nil
		}
		if err := u.validate(); err != nil {
			return refuse("%v", err), nil
		}
		if _, dup := s.Upstreams[u.Name]; dup {
			return refuse("upstream %q already exists; remove it first or choose another name", u.Name), nil
		}
		nodes := s.assign(u.Replicas)
		if len(nodes) == 0 {
			return refuse("no nodes registered to host upstream %q", u.Name), nil
		}
		u.GroupID = s.NextGroupID
		s.NextGroupID++
		s.Upstreams[u.Name] = u
		s.Assignments[u.GroupID] = nodes
		s.Initial[u.GroupID] = slices.Clone(nodes)
		s.ReplicaIDs[u.GroupID] = map[uint64]uint64{}
		for _, n := range nodes {
			s.ReplicaIDs[u.GroupID][n] = n
		}
		out, _ := json.Marshal(u)
		return sm.Result{Value: resultOK, Data: out}, nil
	case opRemoveUpstream:
		u, ok := s.Upstreams[c.Name]
		if !ok {
			return notFound("unknown upstream %q (see `flotilla upstream list`)", c.Name), nil
		}
		delete(s.Upstreams, c.Name)
		delete(s.Assignments, u.GroupID)
		delete(s.Initial, u.GroupID)
		delete(s.ReplicaIDs, u.GroupID)
		return sm.Result{Value: resultOK}, nil
	case opSetPaused:
		u, ok := s.Upstreams[c.Name]
		if !ok {
			return notFound("unknown upstream %q (see `flotilla upstream list`)", c.Name), nil
		}
		u.Paused = c.Paused
		return sm.Result{Value: resultOK}, nil
	case opSetMembers:
		cur, ok := s.Assignments[c.Group]
		if !ok {
			return refuse("group %d has no upstream (removed?)", c.Group), nil
		}
		if !slices.Equal(cur, c.Expect) {
			return refuse("group %d changed meanwhile (members %v, decision made for %v)", c.Group, cur, c.Expect), nil
		}
		seen := map[uint64]bool{}
		for _, n := range c.Members {
			if _, ok := s.Nodes[n]; !ok || seen[n] {
				return refuse("group %d: node %d is unknown or listed twice", c.Group, n), nil
			}
			seen[n] = true
		}
		if len(c.Members) == 0 {
			return refuse("group %d must keep at least one member", c.Group), nil
		}
		rids := s.ReplicaIDs[c.Group]
		if rids == nil {
			rids = map[uint64]uint64{}
			for _, n := range cur {
				rids[n] = n
			}
			s.ReplicaIDs[c.Group] = rids
		}
		for _, n := range c.Members {
			if slices.Contains(cur, n) {
				continue
			}
			if old, ok := rids[n]; ok {
				rids[n] = old + 1<<NodeIDBits // a new incarnation
			} else {
				rids[n] = n
			}
		}
		s.Assignments[c.Group] = slices.Clone(c.Members)
		// A node removed from the group and assigned again later must join it, never
		// start it anew as a first member.
		s.Initial[c.Group] = slices.DeleteFunc(slices.Clone(s.Initial[c.Group]), func(n uint64) bool { return !slices.Contains(c.Members, n) })
		s.note(c.Note)
		return sm.Result{Value: resultOK}, nil
	case opSetDraining:
		n, ok := s.Nodes[c.NodeID]
		if !ok {
			return notFound("unknown node %d (see `flotilla node list`)", c.NodeID), nil
		}
		n.Draining = c.Draining
		s.note(c.Note)
		return sm.Result{Value: resultOK}, nil
	case opRemoveNode:
		if _, ok := s.Nodes[c.NodeID]; !ok {
			return notFound("unknown node %d (see `flotilla node list`)", c.NodeID), nil
		}
		var held []string
		for gid, nodes := range s.Assignments {
			if slices.Contains(nodes, c.NodeID) {
				held = append(held, fmt.Sprint(gid))
			}
		}
		if len(held) > 0 {
			sort.Strings(held)
			return refuse("node %d still holds replicas of groups %s: drain it first (`flotilla node drain %d`) and wait until it holds none",
				c.NodeID, strings.Join(held, ", "), c.NodeID), nil
		}
		delete(s.Nodes, c.NodeID)
		// A rotation under way was seen by the removed node: its key must never
		// become active. The next rotation adds a fresh generation.
		if p, ok := s.PendingNodeKey(); ok {
			s.NodeKeys = slices.DeleteFunc(s.NodeKeys, func(k SealedNodeKey) bool { return k.Gen == p.Gen })
		}
		s.note(c.Note)
		return sm.Result{Value: resultOK}, nil
	case opSwitchSource:
		return s.switchSource(c), nil
	case opSetCandidates:
		return s.setCandidates(c), nil
	case opNote:
		s.note(c.Note)
		return sm.Result{Value: resultOK}, nil
	case opAddNodeKey:
		if c.NodeKey == nil || c.NodeKey.Sealed == "" {
			return refuse("a node key without its sealed value"), nil
		}
		if p, ok := s.PendingNodeKey(); ok {
			return refuse("a rotation to node key generation %d is under way: finish it (`flotilla cluster rotate-secret` again)", p.Gen), nil
		}
		if c.NodeKey.Gen != max(s.LastNodeKeyGen, s.ActiveNodeKey)+1 {
			return refuse("node key generation %d does not follow the last one added, %d", c.NodeKey.Gen, max(s.LastNodeKeyGen, s.ActiveNodeKey)), nil
		}
		s.NodeKeys = append(s.NodeKeys, *c.NodeKey)
		s.LastNodeKeyGen = c.NodeKey.Gen
		s.note(c.Note)
		return sm.Result{Value: resultOK}, nil
	case opActivateKey:
		p, ok := s.PendingNodeKey()
		if !ok || p.Gen != c.KeyGen {
			return refuse("node key generation %d is not the one a rotation added", c.KeyGen), nil
		}
		s.ActiveNodeKey = c.KeyGen
		s.NodeKeys = []SealedNodeKey{p} // older generations are retired
		s.note(c.Note)
		return sm.Result{Value: resultOK}, nil
	}
	return refuse("unknown metadata operation %q", c.Op), nil
}

// note records a controller decision or operator action, keeping the latest.
func (s *State) note(text string) {
	if text == "" {
		return
	}
	s.Decisions = append(s.Decisions, text)
	if len(s.Decisions) > maxDecisions {
		s.Decisions = slices.Clone(s.Decisions[len(s.Decisions)-maxDecisions:])
	}
}

func refuse(format string, args ...any) sm.Result {
	return sm.Result{Value: resultRefused, Data: []byte(fmt.Sprintf(format, args...))}
}

func notFound(format string, args ...any) sm.Result {
	return sm.Result{Value: resultNotFound, Data: []byte(fmt.Sprintf(format, args...))}
}

// viewQuery runs a function on the state under the state machine's read lock: a
// caller that needs a few fields reads them without copying every upstream.
type viewQuery func(*State)

// Lookup returns a deep copy of the state, so callers can never race with Update;
// a viewQuery instead runs on the state itself and returns nothing.
func (m *metaSM) Lookup(q interface{}) (interface{}, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	switch q := q.(type) {
	case versionQuery:
		return m.version, nil
	case viewQuery:
		q(m.state)
		return nil, nil
	}
	return m.state.Clone(), nil
}

func (m *metaSM) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := json.NewEncoder(w).Encode(m.state); err != nil {
		return fmt.Errorf("placement: save snapshot: %w", err)
	}
	return nil
}

func (m *metaSM) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	s := newState()
	if err := json.NewDecoder(r).Decode(s); err != nil {
		return fmt.Errorf("placement: recover snapshot: %w", err)
	}
	m.mu.Lock()
	m.state = s
	m.version++
	m.mu.Unlock()
	return nil
}

func (m *metaSM) Close() error { return nil }

// Service reads and changes the metadata through raft.
type Service struct {
	nh *dragonboat.NodeHost
}

// NewService wraps a NodeHost on which the metadata group is started.
func NewService(nh *dragonboat.NodeHost) *Service { return &Service{nh: nh} }

// CreateStateMachine is the factory to pass to StartCluster for MetaGroupID.
func CreateStateMachine(clusterID, nodeID uint64) sm.IStateMachine {
	return newMetaSM(clusterID, nodeID)
}

// ErrRefused is what every refusal of a metadata change matches with errors.Is;
// the error is a *RefusedError (errors.As) carrying the reason.
var ErrRefused = errors.New("refused")

// RefusedError is why the metadata group refused a change: the caller's to fix.
type RefusedError struct {
	Reason string
	// NotFound: the upstream or node the command named does not exist.
	NotFound bool
}

func (e *RefusedError) Error() string { return ErrRefused.Error() + ": " + e.Reason }

// Is makes errors.Is(err, ErrRefused) hold.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

func (s *Service) propose(ctx context.Context, c command) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("placement: encode command: %w", err)
	}
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	res, err := raftprop.SyncPropose(ctx, s.nh, MetaGroupID, b)
	if err != nil {
		return nil, fmt.Errorf("placement: %s: %w", c.Op, err)
	}
	if res.Value != resultOK {
		return nil, &RefusedError{Reason: string(res.Data), NotFound: res.Value == resultNotFound}
	}
	return res.Data, nil
}

func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, 10*time.Second)
}

// RegisterNode adds or updates a node.
func (s *Service) RegisterNode(ctx context.Context, n Node) error {
	_, err := s.propose(ctx, command{Op: opRegisterNode, Node: &n})
	return err
}

// AddUpstream stores a new upstream, allocating its group and placing its replicas.
func (s *Service) AddUpstream(ctx context.Context, u Upstream) (*Upstream, error) {
	data, err := s.propose(ctx, command{Op: opAddUpstream, Upstream: &u})
	if err != nil {
		return nil, err
	}
	var out Upstream
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("placement: decode added upstream: %w", err)
	}
	return &out, nil
}

// RemoveUpstream deletes an upstream; nodes stop its group and delete its data.
func (s *Service) RemoveUpstream(ctx context.Context, name string) error {
	_, err := s.propose(ctx, command{Op: opRemoveUpstream, Name: name})
	return err
}

// SetPaused pauses or resumes pulling from an upstream.
func (s *Service) SetPaused(ctx context.Context, name string, paused bool) error {
	_, err := s.propose(ctx, command{Op: opSetPaused, Name: name, Paused: paused})
	return err
}

// SetMembers changes a group's assignment from expect to members, recording note.
func (s *Service) SetMembers(ctx context.Context, gid uint64, expect, members []uint64, note string) error {
	_, err := s.propose(ctx, command{Op: opSetMembers, Group: gid, Expect: expect, Members: members, Note: note})
	return err
}

// SetDraining starts or stops draining a node.
func (s *Service) SetDraining(ctx context.Context, id uint64, draining bool, note string) error {
	_, err := s.propose(ctx, command{Op: opSetDraining, NodeID: id, Draining: draining, Note: note})
	return err
}

// RemoveNode forgets a node that holds no replicas.
func (s *Service) RemoveNode(ctx context.Context, id uint64, note string) error {
	_, err := s.propose(ctx, command{Op: opRemoveNode, NodeID: id, Note: note})
	return err
}

// AddNodeKey starts a rotation: the next generation of the node key, which members
// install to verify with, while the active one still signs.
func (s *Service) AddNodeKey(ctx context.Context, k SealedNodeKey, note string) error {
	_, err := s.propose(ctx, command{Op: opAddNodeKey, NodeKey: &k, Note: note})
	return err
}

// ActivateNodeKey ends a rotation: generation gen signs from now on and older ones
// are retired.
func (s *Service) ActivateNodeKey(ctx context.Context, gen uint64, note string) error {
	_, err := s.propose(ctx, command{Op: opActivateKey, KeyGen: gen, Note: note})
	return err
}

// Note records a decision that changes no metadata (a leader transfer).
func (s *Service) Note(ctx context.Context, note string) error {
	_, err := s.propose(ctx, command{Op: opNote, Note: note})
	return err
}

// Read returns the metadata with a linearizable read.
func (s *Service) Read(ctx context.Context) (*State, error) {
	v, err := s.syncRead(ctx, nil)
	if err != nil {
		return nil, err
	}
	return v.(*State), nil
}

// View runs fn on the metadata after a linearizable read, without the copy Read
// makes (a full copy per call made adding the 1,000th upstream cost 1,000 upstream
// copies). fn runs under the metadata's read lock: it must return quickly and
// must neither modify the State nor keep any part of it.
func (s *Service) View(ctx context.Context, fn func(*State)) error {
	_, err := s.syncRead(ctx, viewQuery(fn))
	return err
}

// syncRead is a linearizable read of query, retried while the metadata group has
// no leader.
func (s *Service) syncRead(ctx context.Context, query any) (any, error) {
	ctx, cancel := withTimeout(ctx)
	defer cancel()
	for {
		// Short attempts: a read raft drops (no leader known yet, an election) is
		// retried instead of failing the caller or waiting out its whole deadline.
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		v, err := s.nh.SyncRead(actx, MetaGroupID, query)
		acancel()
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, dragonboat.ErrClusterNotReady) && !errors.Is(err, dragonboat.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return nil, fmt.Errorf("placement: read metadata: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("placement: read metadata: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Local returns this node's possibly stale copy of the metadata; the agent and the
// MySQL front end use it so they keep working while the metadata leader is away.
// LocalVersion is this node's metadata version: it changes whenever the metadata
// may have (cheap, no copy).
func (s *Service) LocalVersion() (uint64, error) {
	v, err := s.nh.StaleRead(MetaGroupID, versionQuery{})
	if err != nil {
		return 0, fmt.Errorf("placement: read local metadata version: %w", err)
	}
	return v.(uint64), nil
}

func (s *Service) Local() (*State, error) {
	v, err := s.nh.StaleRead(MetaGroupID, nil)
	if err != nil {
		return nil, fmt.Errorf("placement: read local metadata: %w", err)
	}
	return v.(*State), nil
}
