//go:build !chaosbug_partial

package shard

// dropCommit is false: every transaction is proposed whole. The test/chaos suite
// builds a binary with the tag chaosbug_partial, whose dropCommit proposes some
// transactions without their last event, to show that its checker catches a syncer
// proposing a partial transaction; no release is built with it.
func dropCommit(uint64) bool { return false }
