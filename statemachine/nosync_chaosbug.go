//go:build chaosbug_nosync

package statemachine

// skipSegmentSync is true in the planted-bug build (test/chaos): segments are
// never fsynced.
const skipSegmentSync = true
