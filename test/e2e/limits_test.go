package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

func wantMySQLError(t *testing.T, what string, err error, code uint16) {
	t.Helper()
	var me *mysql.MyError
	if !errors.As(err, &me) || me.Code != code {
		t.Fatalf("%s: want MySQL error %d, got %v", what, code, err)
	}
}

// TestClientLimits: through the real binary, each limit answers with MySQL's error
// number (1203 per user, 1040 for the node, 1153 for an oversized packet, 1130 for an
// address outside --allow-ips), and a normal replica still replicates afterwards.
func TestClientLimits(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	fl := startRelayNode(ctx, t, filepath.Join(dir, "flotilla"), master, "--max-connections", "4", "--max-user-connections", "2", "--max-allowed-packet", "1M")
	login := func() (*client.Conn, error) {
		return client.ConnectWithTimeout(fl.MySQLAddr, replicaUser, replicaPass, "", 10*time.Second)
	}
	var held []*client.Conn
	for i := 0; i < 2; i++ {
		c, err := login()
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	_, err := login()
	wantMySQLError(t, "a third session of one user", err, mysql.ER_TOO_MANY_USER_CONNECTIONS)
	// Two connections that never log in. The refused third session may still count
	// for a moment (its slot is freed as its goroutine ends), so a connection that
	// gets 1040 instead of the greeting is tried again.
	var raw []net.Conn
	for deadline := time.Now().Add(10 * time.Second); len(raw) < 2; {
		c, err := net.Dial("tcp", fl.MySQLAddr)
		if err != nil {
			t.Fatal(err)
		}
		var b [5]byte // packet header and the first payload byte: 10 for a greeting
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, b[:]); err == nil && b[4] == 10 {
			raw = append(raw, c)
			continue
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("no greeting on a raw connection within 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = login()
	wantMySQLError(t, "a fifth connection to a node with --max-connections 4", err, mysql.ER_CON_COUNT_ERROR)
	for _, c := range raw {
		c.Close()
	}
	_, err = held[0].Execute("SELECT '" + strings.Repeat("x", 2<<20) + "'")
	wantMySQLError(t, "a 2 MiB statement", err, mysql.ER_NET_PACKET_TOO_LARGE)
	for _, c := range held {
		c.Close()
	}

	// The node serves on: a replica connects (the limits freed as sessions ended)
	// and replicates a workload exactly.
	r := startReplica(ctx, t, filepath.Join(dir, "replica"), 11)
	changeMaster(ctx, t, r, fl, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	if _, err := mariadbtest.RunWorkload(ctx, master, 0); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, "replica", master, r, 2*time.Minute)
	sameData(t, "replica", checksums(ctx, t, master), checksums(ctx, t, r))

	// Shutdown is orderly with a replica dumping and an idle session open: sessions,
	// the syncer and the controller end before storage closes, and the process exits
	// cleanly.
	idle, err := login()
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := fl.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if log := fl.LogTail(200); strings.Contains(log, "workers still running") || strings.Contains(log, "panic") {
		t.Fatalf("unclean shutdown:\n%s", log)
	}

	guarded := flotillatest.NewNode(t, filepath.Join(dir, "guarded"), 1)
	guarded.Args = []string{"--allow-ips", "10.0.0.0/8,127.0.0.2"}
	guarded.Start(ctx)
	_, err = client.ConnectWithTimeout(guarded.MySQLAddr, replicaUser, replicaPass, "", 10*time.Second)
	wantMySQLError(t, "a client outside --allow-ips", err, mysql.ER_HOST_NOT_PRIVILEGED)
}
