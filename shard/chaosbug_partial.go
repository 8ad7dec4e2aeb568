//go:build chaosbug_partial

package shard

// dropCommit: the planted-bug build (test/chaos) drops the commit of every 97th
// transaction.
func dropCommit(seq uint64) bool { return seq%97 == 0 }
