package raftlog

import (
	"math/rand/v2"
	"testing"

	"github.com/lni/dragonboat/v3/config"
	pb "github.com/lni/dragonboat/v3/raftpb"
	gvfs "github.com/lni/goutils/vfs"
)

// saveUpdate saves one update of group 5 from its step worker.
func saveUpdate(t *testing.T, l *LogDB, u pb.Update) {
	t.Helper()
	u.ClusterID, u.NodeID = 5, 1
	if err := l.SaveRaftState([]pb.Update{u}, 5%config.GetDefaultEngineConfig().ExecShards); err != nil {
		t.Fatal(err)
	}
}

// powerCut closes l as a crash would (writing nothing it held back), keeps only
// what was synced, and reopens the log, reading group 5's state as dragonboat does
// at a start (with the latest snapshot's index).
func powerCut(t *testing.T, fs *gvfs.MemFS, l *LogDB, snapshotIndex uint64) (*LogDB, pb.State) {
	t.Helper()
	l.noFlushAtClose = true
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	fs.ResetToSyncedState()
	l = openTestLog(t, fs)
	rs, err := l.ReadRaftState(5, 1, snapshotIndex)
	if err != nil {
		t.Fatal(err)
	}
	return l, rs.State
}

// TestCommitIndexRidesWithTheNextWrite: an update that changes only the commit index
// is not written on its own (a power cut loses it, and the group restarts from the
// commit index saved before); the next update that writes carries it; a term or a
// vote is written at once; a group's first state after the log opened is written;
// a commit index below the latest snapshot's reads back as that index; and the
// updates handed in are left as they were; a clean Close writes what was held
// back. Write every update (drop commitsOnly's check) and the first cut keeps
// commit 4; drop Close's flush and the last checks fail.
func TestCommitIndexRidesWithTheNextWrite(t *testing.T) {
	fs := gvfs.NewStrictMem()
	rnd := rand.New(rand.NewPCG(1, 2))
	l := openTestLog(t, fs)
	saveUpdate(t, l, pb.Update{State: pb.State{Term: 1, Vote: 1, Commit: 2}, EntriesToSave: entries(rnd, 1, 4)})
	commitOnly := []pb.Update{{ClusterID: 5, NodeID: 1, State: pb.State{Term: 1, Vote: 1, Commit: 4}}}
	if err := l.SaveRaftState(commitOnly, 5%config.GetDefaultEngineConfig().ExecShards); err != nil {
		t.Fatal(err)
	}
	l, st := powerCut(t, fs, l, 0)
	if st != (pb.State{Term: 1, Vote: 1, Commit: 2}) {
		t.Fatalf("after a commit-only save and a power cut the state is %+v, want commit 2 (the commit-only save was synced on its own)", st)
	}

	// Known again from the read: a commit-only update waits, the next entries carry it.
	saveUpdate(t, l, pb.Update{State: pb.State{Term: 1, Vote: 1, Commit: 3}})
	withEntries := []pb.Update{{ClusterID: 5, NodeID: 1, EntriesToSave: entries(rnd, 5, 2)}}
	if err := l.SaveRaftState(withEntries, 5%config.GetDefaultEngineConfig().ExecShards); err != nil {
		t.Fatal(err)
	}
	if !pb.IsEmptyState(withEntries[0].State) {
		t.Fatalf("SaveRaftState changed the update handed to it: state %+v", withEntries[0].State)
	}
	l, st = powerCut(t, fs, l, 0)
	if st.Commit != 3 {
		t.Fatalf("after entries saved behind a commit-only update, the cut left commit %d, want 3", st.Commit)
	}

	// A vote is written at once, and so is the commit index with it.
	saveUpdate(t, l, pb.Update{State: pb.State{Term: 2, Vote: 2, Commit: 4}})
	l, st = powerCut(t, fs, l, 0)
	if st != (pb.State{Term: 2, Vote: 2, Commit: 4}) {
		t.Fatalf("after a new term and vote and a power cut the state is %+v, want term 2, vote 2, commit 4", st)
	}

	// A commit index below the latest snapshot's reads back as the snapshot's index.
	saveUpdate(t, l, pb.Update{State: pb.State{Term: 2, Vote: 2, Commit: 6}})
	l, st = powerCut(t, fs, l, 5)
	if st.Commit != 5 {
		t.Fatalf("commit index %d read with the latest snapshot at 5, want 5", st.Commit)
	}

	// A clean Close writes what it held: the raised commit index, then a later one.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	fs.ResetToSyncedState()
	l = openTestLog(t, fs)
	if rs, err := l.ReadRaftState(5, 1, 0); err != nil || rs.State.Commit != 5 {
		t.Fatalf("after a clean close the saved commit index is %d (%v), want the raised 5", rs.State.Commit, err)
	}
	saveUpdate(t, l, pb.Update{State: pb.State{Term: 2, Vote: 2, Commit: 6}})
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	fs.ResetToSyncedState()
	l = openTestLog(t, fs)
	defer l.Close()
	if rs, err := l.ReadRaftState(5, 1, 0); err != nil || rs.State != (pb.State{Term: 2, Vote: 2, Commit: 6}) {
		t.Fatalf("after a clean close the saved state is %+v (%v), want the held commit index 6", rs.State, err)
	}
}
