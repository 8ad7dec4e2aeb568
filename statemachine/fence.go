//go:build !chaosbug_nofence

package statemachine

// skipFence is false: proposals of a stale epoch, or that do not follow the group's
// last transaction, are rejected. The test/chaos suite builds a binary with the tag
// chaosbug_nofence to show that its checker catches a state machine without the
// fence; no release is built with it.
const skipFence = false
