//go:build !chaosbug_nosync

package statemachine

// skipSegmentSync is false: Sync makes every applied record durable. The
// test/chaos suite builds a binary with the tag chaosbug_nosync, whose Sync skips
// the segments' fsync (a truncation's own fsync remains), to show that its
// power-cut fault catches an apply that drops an fsync; no release is built
// with it.
const skipSegmentSync = false
