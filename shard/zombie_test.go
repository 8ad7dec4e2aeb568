package shard

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// TestZombieDumpIsEnded reproduces, on a real MariaDB master, a new leader's dump
// held up by a former leader's (same server_id) that is blocked writing to a peer
// that stopped reading (a frozen process): the master only flags the old dump, and
// the new one sends nothing. killZombieDumps ends the old dump and the new one
// starts at once.
func TestZombieDumpIsEnded(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m, err := mariadbtest.Start(ctx, filepath.Join(t.TempDir(), "master"), mariadbtest.Options{ServerID: 1, LogBin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	const user, pass = "syncer", "syncer-pass"
	if err := m.CreateReplUser(ctx, user, pass); err != nil {
		t.Fatal(err)
	}
	// Far more binlog than the socket buffers hold: a dump whose reader stops
	// reading blocks writing.
	for _, q := range []string{"CREATE DATABASE z", "CREATE TABLE z.t (id INT PRIMARY KEY, b LONGBLOB)"} {
		if err := m.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 48; i++ {
		if err := m.Exec(ctx, "INSERT INTO z.t VALUES (?, REPEAT('z', 1000000))", i); err != nil {
			t.Fatal(err)
		}
	}
	start, _ := mysql.ParseMariadbGTIDSet("")
	open := func() *dumpStream {
		t.Helper()
		st, err := openDumpStream(ctx, dumpConfig{addr: m.Addr(), user: user, password: pass, serverID: 4242, gset: start, heartbeat: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	// The frozen leader: its stream reads a few events ahead, then no more.
	frozen := open()
	defer frozen.close()
	// It is frozen once its read-ahead is full (its reader holds one more event and
	// reads nothing else) and the master's dump stays blocked writing to it: seen
	// writing while the reader still drained the socket, the old dump would finish
	// its event, see the kill the new dump's arrival makes and end on its own.
	deadline := time.Now().Add(30 * time.Second)
	for stuck := 0; stuck < 10; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first dump never blocked writing to its reader: the test set up nothing")
		}
		if len(frozen.events) == cap(frozen.events) && frozenWriting(ctx, t, m) {
			stuck++
		} else {
			stuck = 0
		}
	}
	// The new leader's dump (same server_id) waits behind it.
	fresh := open()
	defer fresh.close()
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = fresh.next(wctx)
	wcancel()
	if err == nil {
		t.Fatal("the new dump started while the old one was stuck: the master no longer holds it up, and killZombieDumps may be needless")
	}
	ended, err := killZombieDumps(ctx, func(ctx context.Context) (*client.Conn, error) {
		return dialProbe(ctx, m.Addr(), user, pass, nil)
	})
	if err != nil || len(ended) != 1 {
		t.Fatalf("killZombieDumps ended %v (err %v); want the one stuck dump", ended, err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	if _, err := fresh.next(rctx); err != nil {
		t.Fatalf("the new dump did not start once the old one was ended: %v", err)
	}
	// Nothing else of the user is killed: the live dump goes on.
	if ended, err := killZombieDumps(ctx, func(ctx context.Context) (*client.Conn, error) {
		return dialProbe(ctx, m.Addr(), user, pass, nil)
	}); err != nil || len(ended) != 0 {
		t.Fatalf("a second call ended %v (err %v); want nothing", ended, err)
	}
	if _, err := fresh.next(rctx); err != nil {
		t.Fatalf("the live dump broke: %v", err)
	}
}

// frozenWriting reports whether the master has a dump thread blocked writing.
func frozenWriting(ctx context.Context, t *testing.T, m *mariadbtest.Server) bool {
	t.Helper()
	v, err := m.QueryValue(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Binlog Dump' AND STATE = 'Writing to net'")
	return err == nil && v == "1"
}
