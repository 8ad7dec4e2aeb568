// Package chaos is Flotilla's fault-injection suite: a cluster of real nodes relays
// real MariaDB masters under continuous writes to real MariaDB replicas, and the
// test MySQL master to go-mysql's MySQL-flavor replica, while a nemesis, driven by
// a printed seed, injects faults; an independent checker then verifies the promise
// end to end.
//
// Invariants the checker holds the cluster to:
//   - every transaction a master acknowledged is on every replica, exactly once and
//     in the master's order (the replicas run with gtid_strict_mode, so a duplicated
//     or reordered GTID stops them with an error), and each replica ends with the
//     master's rows and GTID position;
//   - the MySQL-flavor replica receives every sequence number of its master once,
//     in order, byte for byte as the master wrote it;
//   - every member of a group serves byte-identical binlog files up to the shortest,
//     and each decodes (mariadb-binlog; go-mysql's parser for the MySQL upstream)
//     without a transaction cut from its commit;
//   - no node crashed except by the nemesis (a panic in any log is a failure);
//   - what the semi-sync master acknowledged (it cannot fall back to asynchronous
//     commits during a run) survives its failover;
//   - in long runs, no node's memory or open files rise steadily.
//
// The nemesis (nemesis.go) kills, freezes and restarts nodes by role, restarts
// and fails over masters, fills one node's disk, slows or cuts the power of
// another (internal/faultfs, the only node started with those knobs), and cuts
// links through the TCP proxies (netproxy.go) standing at every node's raft and
// admin address and at every master. Faults do not overlap: each is healed, and
// the cluster healthy, before the next; a cluster that does not recover ends
// the injection as a violation.
//
// The same seed gives the same schedule of faults (kind, moment, duration and
// target role); which node holds a role is decided by the cluster at run time.
// Each run writes a history (faults, writes, acknowledgements) and prints a
// one-screen summary with the seed.
package chaos
