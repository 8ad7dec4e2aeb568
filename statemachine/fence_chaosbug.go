//go:build chaosbug_nofence

package statemachine

// skipFence is true in the planted-bug build (test/chaos): the fence is off.
const skipFence = true
