//go:build race

package server

// raceDetector is true: this test binary runs with the race detector, whose shadow memory
// takes page faults of its own.
const raceDetector = true
