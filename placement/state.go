// Package placement is the metadata group (raft group 1): which nodes exist, which
// upstreams Flotilla relays, and which nodes host each upstream's group. Every node
// reads it to start and stop its local replicas; the admin API writes it.
//
// Invariants: group ids are allocated from NextGroupID and never reused; an upstream
// name maps to exactly one group; assignments never put two replicas of one group on
// the same node.
package placement

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/flotilla-relay/flotilla/internal/mysqlauth"
)

// MetaGroupID is the raft cluster id of the metadata group.
const MetaGroupID uint64 = 1

// Node is a Flotilla process.
type Node struct {
	ID        uint64            `json:"id"`
	RaftAddr  string            `json:"raft_addr"`
	MySQLAddr string            `json:"mysql_addr"`
	AdminAddr string            `json:"admin_addr"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Draining: the controller moves every replica off the node (`node drain`).
	Draining bool `json:"draining,omitempty"`
	// Version and Commit are the node's release and build commit, and
	// MaxClusterVersion the newest cluster version its binary understands, as it
	// registered them at its last start (empty and 0 for releases before 0.29).
	Version           string `json:"version,omitempty"`
	Commit            string `json:"commit,omitempty"`
	MaxClusterVersion uint32 `json:"max_cluster_version,omitempty"`
}

// ReplicaUser is a login that replicas of an upstream use against Flotilla. Only the
// password's hash for the user's authentication plugin is kept (mysqlauth.Hash).
type ReplicaUser struct {
	User string `json:"user"`
	// Plugin is mysql_native_password or caching_sha2_password ("" in old metadata:
	// native).
	Plugin string `json:"plugin,omitempty"`
	// Hash is the password's hash for Plugin.
	Hash string `json:"hash,omitempty"`
	// RequireTLS refuses logins of this user that did not switch to TLS.
	RequireTLS bool `json:"require_tls,omitempty"`
	// Password is the cleartext of metadata written before hashes were kept, read
	// only through Credential. Entries with a Hash hold a random value here, which
	// keeps an older node from accepting an empty password.
	Password string `json:"password,omitempty"`
}

// Credential returns the user's plugin and password hash, deriving them from the
// cleartext password of old metadata.
func (r ReplicaUser) Credential() (plugin, hash string) {
	if r.Hash != "" {
		p := r.Plugin
		if p == "" {
			p = mysqlauth.Native
		}
		return p, r.Hash
	}
	if r.Password == "" {
		return mysqlauth.Native, "" // no password: never logs in
	}
	h, _ := mysqlauth.Hash(mysqlauth.Native, r.Password)
	return mysqlauth.Native, h
}

// Upstream is a master Flotilla relays, with what `upstream add` learned about it.
type Upstream struct {
	Name   string `json:"name"`
	Flavor string `json:"flavor"`
	Source string `json:"source"`
	User   string `json:"user"`
	// Password is sealed with the cluster key (secure.Sealer, bound to the upstream's
	// name); metadata written before sealing holds it in clear.
	Password     string        `json:"password"`
	ReplicaUsers []ReplicaUser `json:"replica_users,omitempty"`
	// SourceTLS, when set, makes the syncer connect to the master over TLS.
	SourceTLS *SourceTLS `json:"source_tls,omitempty"`
	// ServerID, DomainID, ServerUUID and Version describe the master; the front end
	// presents them to replicas so Flotilla looks like the master.
	ServerID   uint32 `json:"server_id"`
	DomainID   uint32 `json:"domain_id"`
	ServerUUID string `json:"server_uuid,omitempty"`
	Version    string `json:"version"`
	// BinlogChecksum is the master's binlog_checksum (CRC32 or NONE).
	BinlogChecksum string `json:"binlog_checksum,omitempty"`
	// StartGTID is the GTID position the group's history starts from.
	StartGTID string `json:"start_gtid"`
	// InitialBytes is the size of the master's binary logs at `upstream add`: what
	// the initial copy fetches (progress displays).
	InitialBytes uint64 `json:"initial_bytes,omitempty"`
	// SemiSync is auto, on or off ("" in old metadata: off): whether the syncer
	// acknowledges transactions to the master as a semi-sync replica.
	SemiSync string `json:"semi_sync,omitempty"`
	// InitialGTID is the master's GTID position at `upstream add`: the initial copy
	// is done when the group has executed it.
	InitialGTID string `json:"initial_gtid,omitempty"`
	// Candidates are the sources the upstream may switch to when Source has been
	// unreachable for SourceDownAfter (0: DefaultSourceDownAfter); Switches are its
	// latest source changes, oldest first.
	Candidates      []string       `json:"candidates,omitempty"`
	SourceDownAfter time.Duration  `json:"source_down_after,omitempty"`
	Switches        []SourceSwitch `json:"switches,omitempty"`
	// AddWarnings are the checks `upstream add` could not run (a master refusing
	// SHOW GRANTS, say), kept so that `upstream get` still shows them.
	AddWarnings []string `json:"add_warnings,omitempty"`
	GroupID     uint64   `json:"group_id"`
	Replicas    int      `json:"replicas"`
	// SyncerServerID is the server_id the syncer uses toward the master (0 in old
	// metadata: 2000000000 + the group id).
	SyncerServerID uint32 `json:"syncer_server_id,omitempty"`
	// ServeFrom is ServeFromLeader (default, "" in old metadata) or ServeFromAny.
	ServeFrom string    `json:"serve_from,omitempty"`
	Paused    bool      `json:"paused"`
	CreatedAt time.Time `json:"created_at"`
}

// SourceTLS is how the syncer verifies the master's certificate.
type SourceTLS struct {
	// CAPEM is the CA certificate(s) the master's certificate must chain to (PEM;
	// empty: the system's roots).
	CAPEM string `json:"ca_pem,omitempty"`
	// ServerName is the name checked in the master's certificate (empty: the host
	// of Source).
	ServerName string `json:"server_name,omitempty"`
}

// Where replicas of an upstream are served from (Upstream.ServeFrom).
const (
	// ServeFromLeader relays every dump from the group's leader (the design's
	// routing); a leader change makes replicas reconnect.
	ServeFromLeader = "leader"
	// ServeFromAny lets each node serve from its own replica: fan-out spreads over
	// the cluster and dumps stay open across a leader change.
	ServeFromAny = "any"
)

// State is the whole metadata.
type State struct {
	Nodes       map[uint64]*Node     `json:"nodes"`
	Upstreams   map[string]*Upstream `json:"upstreams"`
	Assignments map[uint64][]uint64  `json:"assignments"`
	// Initial are each group's members when it was created: they start the group
	// together; every node assigned later joins it.
	Initial map[uint64][]uint64 `json:"initial,omitempty"`
	// ReplicaIDs are the raft replica ids of the nodes that have been members of each
	// group (see ReplicaID); kept after a node leaves, so its next replica of the
	// group gets a new id.
	ReplicaIDs  map[uint64]map[uint64]uint64 `json:"replica_ids,omitempty"`
	NextGroupID uint64                       `json:"next_group_id"`
	// Decisions are the placement controller's latest changes, newest last.
	Decisions []string `json:"decisions,omitempty"`
	// NodeKeys are the generations of the key that signs node-to-node calls, each
	// sealed with the cluster key (never in clear in a raft log): ActiveNodeKey's,
	// and a newer one while a rotation waits for every member to hold it. Empty
	// before the first rotation (generation 0 derives from the cluster secret).
	// The metadata group decides rotations: a node no longer a member cannot make
	// or follow one.
	NodeKeys      []SealedNodeKey `json:"node_keys,omitempty"`
	ActiveNodeKey uint64          `json:"active_node_key,omitempty"`
	// LastNodeKeyGen is the last generation a rotation added: generations are never
	// reused, so one number always names one key.
	LastNodeKeyGen uint64 `json:"last_node_key_gen,omitempty"`
	// ClusterVersion is the version every member understands and commands may use
	// (0 in metadata from before cluster versions: 1; see Version).
	ClusterVersion uint32 `json:"cluster_version,omitempty"`
}

// SealedNodeKey is one generation of the node key, sealed with the cluster key.
type SealedNodeKey struct {
	Gen    uint64 `json:"gen"`
	Sealed string `json:"sealed"`
}

// PendingNodeKey returns the generation a rotation has added but not activated.
func (s *State) PendingNodeKey() (SealedNodeKey, bool) {
	for _, k := range s.NodeKeys {
		if k.Gen > s.ActiveNodeKey {
			return k, true
		}
	}
	return SealedNodeKey{}, false
}

// maxDecisions bounds State.Decisions.
const maxDecisions = 50

func newState() *State {
	return &State{Nodes: map[uint64]*Node{}, Upstreams: map[string]*Upstream{}, Assignments: map[uint64][]uint64{},
		Initial: map[uint64][]uint64{}, ReplicaIDs: map[uint64]map[uint64]uint64{}, NextGroupID: 2}
}

// UpstreamNames returns the upstream names in order.
func (s *State) UpstreamNames() []string {
	names := make([]string, 0, len(s.Upstreams))
	for n := range s.Upstreams {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ByGroup returns the upstream of a group id.
func (s *State) ByGroup(id uint64) (*Upstream, bool) {
	for _, u := range s.Upstreams {
		if u.GroupID == id {
			return u, true
		}
	}
	return nil, false
}

// ForReplicaUser returns the upstreams that declare user as a replica user.
func (s *State) ForReplicaUser(user string) []*Upstream {
	var out []*Upstream
	for _, n := range s.UpstreamNames() {
		u := s.Upstreams[n]
		for _, ru := range u.ReplicaUsers {
			if ru.User == user {
				out = append(out, u)
				break
			}
		}
	}
	return out
}

// Raft never lets a replica id rejoin a group it was removed from, so a node that
// leaves a group and is assigned to it again needs a new one. A replica id is the node
// id in its low NodeIDBits bits and the node's incarnation in the group above them:
// a node's first replica of a group has the node's own id.
const (
	// NodeIDBits bounds node ids (below 1<<NodeIDBits).
	NodeIDBits = 20
	// MaxNodeID is the largest node id.
	MaxNodeID = 1<<NodeIDBits - 1
)

// NodeOfReplica returns the node a raft replica id belongs to.
func NodeOfReplica(rid uint64) uint64 { return rid & MaxNodeID }

// ReplicaID returns the raft replica id of node's current (or next) replica of gid.
func (s *State) ReplicaID(gid, node uint64) uint64 {
	if r, ok := s.ReplicaIDs[gid][node]; ok {
		return r
	}
	return node
}

// Note formats a decision for State.Decisions, stamped with the proposer's clock
// (applying a command must not read the clock).
func Note(format string, args ...any) string {
	return time.Now().UTC().Format(time.RFC3339) + " " + fmt.Sprintf(format, args...)
}

// IsInitial reports whether node started group gid as one of its first members.
func (s *State) IsInitial(gid, node uint64) bool {
	init, ok := s.Initial[gid]
	if !ok {
		// Metadata from before Initial was recorded: every member then was initial.
		return slices.Contains(s.Assignments[gid], node)
	}
	return slices.Contains(init, node)
}

// assign picks the nodes for a new group: the nodes with the fewest replicas, spread
// across zones where labels say so, ties broken by node id so every replica of the
// metadata group computes the same answer.
func (s *State) assign(replicas int) []uint64 {
	load := map[uint64]int{}
	for _, nodes := range s.Assignments {
		for _, n := range nodes {
			load[n]++
		}
	}
	ids := make([]uint64, 0, len(s.Nodes))
	for id, n := range s.Nodes {
		if !n.Draining {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool {
		if load[ids[i]] != load[ids[j]] {
			return load[ids[i]] < load[ids[j]]
		}
		return ids[i] < ids[j]
	})
	var out []uint64
	zones := map[string]bool{}
	// First pass: one per zone; second pass: fill up.
	for pass := 0; pass < 2 && len(out) < replicas; pass++ {
		for _, id := range ids {
			if len(out) == replicas {
				break
			}
			if slices.Contains(out, id) {
				continue
			}
			z := s.Nodes[id].Labels["zone"]
			if pass == 0 && z != "" && zones[z] {
				continue
			}
			zones[z] = true
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// validate checks an upstream before it is stored.
func (u *Upstream) validate() error {
	if u.Name == "" {
		return fmt.Errorf("upstream name is empty")
	}
	for _, r := range u.Name {
		if !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return fmt.Errorf("upstream name %q may only contain letters, digits, '-', '_' and '.'", u.Name)
		}
	}
	if u.Source == "" {
		return fmt.Errorf("upstream %q has no source address", u.Name)
	}
	if err := validateCandidates(u.Candidates); err != nil {
		return fmt.Errorf("upstream %q: %w", u.Name, err)
	}
	if u.ServeFrom != "" && u.ServeFrom != ServeFromLeader && u.ServeFrom != ServeFromAny {
		return fmt.Errorf("upstream %q: serve-from must be %q or %q, not %q", u.Name, ServeFromLeader, ServeFromAny, u.ServeFrom)
	}
	if u.Replicas < 1 {
		return fmt.Errorf("upstream %q: replicas must be at least 1", u.Name)
	}
	return nil
}
