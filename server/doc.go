// Package server assembles one Flotilla process: the raft NodeHost, the node's
// storage, the metadata group, the agent that runs local group replicas, the MySQL
// front end, the admin API and the node-to-node services. It sits above everything
// it wires (as CockroachDB's pkg/server does): within this module only cmd/flotilla
// imports it, and the packages it wires never import it.
//
// Invariants:
//   - Client-facing ports are bound before the node's storage, raft or cluster
//     identity is opened: a port in use fails the start with nothing of the node's
//     data touched but its directory (made if missing) and its cluster version file
//     (checked, and rewritten unchanged).
//   - A node belongs to the cluster its data directory names (see package cluster)
//     before its NodeHost starts.
//   - The raft log's payload files are turned on only once the cluster version that
//     needs them is recorded in the data directory (see raftlog.Factory.On).
//   - Shutdown runs in order: sessions, syncers and the controller end first (they
//     read and propose), then raft, then storage.
package server
