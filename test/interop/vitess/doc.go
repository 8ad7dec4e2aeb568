// Package vitess checks Flotilla's MySQL front end with Vitess's binlog client
// (vitess.io/vitess/go/mysql, in vitess_test.go): the client picks its dialect from
// the server's greeting (a "5.5.5-...-MariaDB-..." greeting makes it speak MariaDB's,
// one starting with "8." MySQL 8's), then reads by GTID and by file and position. It
// is a module of its own so that Vitess's dependencies stay out of Flotilla's
// go.mod; this file gives the directory a non-test file, so `go vet ./...` accepts it.
package vitess
