// Package vitess holds the interoperability test of Flotilla's MySQL front end with
// Vitess's binlog client (vitess_client_test.go). It is a module of its own so that
// Vitess's dependencies stay out of Flotilla's go.mod; this file only gives the
// directory a non-test file, so `go build ./...` and `go vet ./...` accept it.
package vitess
