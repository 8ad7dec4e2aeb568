// Package cluster is what makes several Flotilla processes one cluster: the cluster's
// identity (kept in each node's data directory), joining, the table of who leads
// which raft group, and the node-to-node service that relays binlog dumps.
//
// Invariants:
//   - A node belongs to at most one cluster for its whole life: its identity file is
//     written once, before its raft node host first starts, and the raft deployment
//     id derived from it keeps two clusters from ever exchanging raft messages.
//   - Binlog crosses nodes only on the authenticated Cluster service (the cluster
//     secret), never through an open port; a relayed dump carries the serving node's
//     events unchanged, so resumption and heartbeats are exactly the local ones.
//   - The leadership table is fed by dragonboat's event listener and never blocks it.
package cluster
