package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// TestCorruptSegmentIsNotServed flips a byte in a segment of a running Flotilla node:
// a replica reading through that point gets error 1236 naming the damage, never the
// damaged bytes, and the node keeps answering other clients.
func TestCorruptSegmentIsNotServed(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	if _, err := mariadbtest.RunWorkload(ctx, master, 0); err != nil {
		t.Fatal(err)
	}
	fl := flotillatest.StartNode(ctx, t, filepath.Join(dir, "flotilla"))
	if out, err := fl.CLI(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	want, _ := master.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	var gid string
	for deadline := time.Now().Add(2 * time.Minute); ; {
		u := getUpstream(ctx, t, fl, "main")
		if u.Group.ExecutedGtid == want {
			gid = u.Upstream.GroupID
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Flotilla did not copy the master's binlog (want %s, has %s)", want, u.Group.ExecutedGtid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	segs, _ := filepath.Glob(filepath.Join(fl.Dir, "data", "storage", "groups", gid, "*.seg"))
	// The largest plain segment: a closed file's, all of it committed and read by
	// a replica starting from the beginning.
	var victim string
	var st os.FileInfo
	for _, p := range segs {
		if s, err := os.Stat(p); err == nil && (st == nil || s.Size() > st.Size()) {
			victim, st = p, s
		}
	}
	if victim == "" {
		t.Fatal("no plain segment file to damage")
	}
	f, err := os.OpenFile(victim, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	f.ReadAt(b, st.Size()/2)
	b[0] ^= 0x01
	f.WriteAt(b, st.Size()/2)
	f.Close()

	r := startReplica(ctx, t, filepath.Join(dir, "replica"), 21)
	changeMaster(ctx, t, r, fl, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	for deadline := time.Now().Add(60 * time.Second); ; {
		s, err := r.SlaveStatus(ctx)
		if err == nil && s["Last_IO_Errno"] == "1236" {
			msg := s["Last_IO_Error"]
			if !strings.Contains(msg, "corrupt segment") || !strings.Contains(msg, "offset") || !strings.Contains(msg, "rebuilt from a peer") {
				t.Errorf("the replica's error does not name the damage: %s", msg)
			}
			if s["Last_SQL_Errno"] != "0" {
				t.Errorf("the replica applied something bad: SQL error %s %s", s["Last_SQL_Errno"], s["Last_SQL_Error"])
			}
			break
		}
		if err == nil && s["Last_IO_Errno"] != "0" && s["Last_IO_Errno"] != "" {
			t.Fatalf("replica got error %s instead of 1236: %s", s["Last_IO_Errno"], s["Last_IO_Error"])
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica got no error reading a corrupt segment: %v", s)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The node still serves everything else.
	if _, err := fl.CLI(ctx, "status"); err != nil {
		t.Fatal(err)
	}

	// Removing the upstream stops its group and deletes its data on the node.
	if out, err := fl.CLI(ctx, "upstream", "remove", "main"); err != nil {
		t.Fatalf("upstream remove: %v %s", err, out)
	}
	if _, err := fl.CLI(ctx, "upstream", "get", "main"); err == nil || !strings.Contains(err.Error(), "unknown upstream") {
		t.Fatalf("a removed upstream must be unknown, got %v", err)
	}
	groupDir := filepath.Join(fl.Dir, "data", "storage", "groups", gid)
	for deadline := time.Now().Add(30 * time.Second); ; {
		// The node logs the removal once its raft log is gone too.
		_, err := os.Stat(groupDir)
		if os.IsNotExist(err) && strings.Contains(fl.LogTail(200), "deleted the data of a removed group") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("data of the removed upstream is still in %s, or its raft log was not removed; log:\n%s", groupDir, fl.LogTail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDamagedRaftFlagFileIsNamed cuts short each flag file dragonboat writes at a
// node's first start (as a crash or a full disk then can): the node refuses to
// start, naming the file and what to do, where it used to die of a nil pointer
// dereference (dragonboat swallows its own panic about the file).
func TestDamagedRaftFlagFileIsNamed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fl := flotillatest.StartNode(ctx, t, filepath.Join(t.TempDir(), "flotilla"))
	if err := fl.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"dragonboat.ds", "NODEHOST.ID"} {
		flag := filepath.Join(fl.Dir, "data", "raft", name)
		good, err := os.ReadFile(flag)
		if err != nil {
			t.Fatalf("the node wrote no %s: %v", name, err)
		}
		if err := os.WriteFile(flag, good[:5], 0o600); err != nil {
			t.Fatalf("cut %s short: %v", name, err)
		}
		err = fl.TryStart(ctx)
		if err == nil {
			t.Fatalf("the node started on a damaged %s", name)
		}
		if msg := err.Error(); !strings.Contains(msg, flag+" (") || !strings.Contains(msg, "is damaged (5 bytes") || !strings.Contains(msg, "node remove") ||
			strings.Contains(msg, "nil pointer dereference") {
			t.Fatalf("the refusal does not name the damaged %s and what to do, or the node panicked:\n%v", name, err)
		}
		if err := os.WriteFile(flag, good, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fl.Start(ctx) // both restored: the node starts again
}
