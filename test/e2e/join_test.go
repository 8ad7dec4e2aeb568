package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// TestJoinChecks: a node claiming an id registered with another raft address is
// refused naming both; a restarted member ignores --join; a node of another cluster
// refuses to join this one.
func TestJoinChecks(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "a"), 2)

	dup := flotillatest.NewNode(t, filepath.Join(dir, "dup"), 2)
	dup.Join = []string{nodes[0].AdminAddr}
	err := dup.TryStart(ctx)
	if err == nil || !strings.Contains(err.Error(), "node id 2 is already registered with raft address "+nodes[1].RaftAddr) ||
		!strings.Contains(err.Error(), dup.RaftAddr) {
		t.Fatalf("a duplicate node id must be refused naming both raft addresses: %v", err)
	}

	nodes[1].Kill()
	nodes[1].Join = []string{nodes[0].AdminAddr}
	nodes[1].Start(ctx)
	if !strings.Contains(nodes[1].LogTail(200), "already a member of the cluster; --join has no effect") {
		t.Fatalf("a restarted member must ignore --join; log:\n%s", nodes[1].LogTail(40))
	}

	other := flotillatest.NewNode(t, filepath.Join(dir, "b"), 1)
	other.Start(ctx)
	other.Kill()
	other.Join = []string{nodes[0].AdminAddr}
	err = other.TryStart(ctx)
	if err == nil || !strings.Contains(err.Error(), "a node never changes cluster") {
		t.Fatalf("a node of another cluster must refuse --join: %v", err)
	}
	// Joining hands out the cluster secret: a node without the admin token is
	// refused, and a cluster whose nodes have no credentials admits nobody.
	stranger := flotillatest.NewNode(t, filepath.Join(dir, "stranger"), 3)
	stranger.Token = "not-the-token"
	stranger.Join = []string{nodes[0].AdminAddr}
	if err := stranger.TryStart(ctx); err == nil || !strings.Contains(err.Error(), "joining needs the cluster's admin credentials") {
		t.Fatalf("a node with the wrong admin token must not join: %v", err)
	}
	open := flotillatest.NewNode(t, filepath.Join(dir, "open"), 1)
	open.Token = ""
	open.Start(ctx)
	joiner := flotillatest.NewNode(t, filepath.Join(dir, "joiner"), 2)
	joiner.Token = ""
	joiner.Join = []string{open.AdminAddr}
	if err := joiner.TryStart(ctx); err == nil || !strings.Contains(err.Error(), "this cluster admits no node") {
		t.Fatalf("a cluster without admin credentials must admit no node: %v", err)
	}
	out, err := nodes[0].CLI(ctx, "node", "list")
	if err != nil || strings.Count(out, "\n") != 3 {
		t.Fatalf("the cluster must still have exactly its 2 nodes: %v\n%s", err, out)
	}
}
