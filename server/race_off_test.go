//go:build !race

package server

// raceDetector is false: this test binary runs without the race detector (whose
// shadow memory takes page faults of its own).
const raceDetector = false
