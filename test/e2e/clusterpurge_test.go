package e2e

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// stalledReader starts a binlog dump from the first served file on node n and never
// reads it: the node's cursor stops early in the history once the socket buffers are
// full, as a slow replica's would.
func stalledReader(t *testing.T, n *flotillatest.Node) *client.Conn {
	t.Helper()
	c, err := client.ConnectWithTimeout(n.MySQLAddr, replicaUser, replicaPass, "", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Execute("SET @master_binlog_checksum='CRC32'"); err != nil {
		t.Fatal(err)
	}
	pkt := []byte{0, 0, 0, 0, 0x12}
	pkt = binary.LittleEndian.AppendUint32(pkt, 4)
	pkt = binary.LittleEndian.AppendUint16(pkt, 0)
	pkt = binary.LittleEndian.AppendUint32(pkt, 999)
	pkt = append(pkt, "flotilla-bin.000001"...)
	c.ResetSequence()
	if err := c.WritePacket(pkt); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestClusterPurgeKeepsFollowerReaders: a replica reading old history from a
// follower (the upstream serves from any replica) holds back a purge asked of
// another node: the purge is forwarded to the group's leader, which asks every node
// what its replicas read.
func TestClusterPurgeKeepsFollowerReaders(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	nodes := flotillatest.StartCluster(ctx, t, filepath.Join(dir, "flotilla"), 3)
	m := startMaster(ctx, t, filepath.Join(dir, "master"))
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "main", "--source", m.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass, "--serve-from", "any"); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	ups := []*clusterUpstream{{name: "main", master: m}}
	for step := 0; step <= 3; step++ {
		runWorkloads(ctx, t, ups, step)
	}
	pos, _ := m.QueryValue(ctx, "SELECT @@gtid_binlog_pos")
	var leader uint64
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		u := getUpstream(ctx, t, nodes[0], "main")
		agree := len(u.Group.MemberStatus) == 3
		for _, ms := range u.Group.MemberStatus {
			agree = agree && ms.ExecutedGtid == pos
		}
		if l, _ := groupView(ctx, t, nodes, "main"); agree && l != 0 {
			leader = l
			break
		}
	}
	if leader == 0 {
		t.Fatal("the group did not settle")
	}
	var follower, other *flotillatest.Node
	for _, n := range nodes {
		switch {
		case n.ID == leader:
		case follower == nil:
			follower = n
		default:
			other = n
		}
	}
	stalledReader(t, follower)
	var reading string
	for deadline := time.Now().Add(time.Minute); reading == ""; time.Sleep(100 * time.Millisecond) {
		for _, r := range getUpstreamReplicas(ctx, t, other, "main") {
			reading = r
		}
		if time.Now().After(deadline) {
			t.Fatal("the stalled reader never showed in status")
		}
	}
	current := getUpstream(ctx, t, other, "main").Group.CurrentFile
	readingFile := reading[:strings.Index(reading, ":")]
	if readingFile >= current {
		t.Fatalf("the stalled reader reached the current file %s (%s): the history is too short for this test", current, reading)
	}
	out, err := other.CLI(ctx, "upstream", "purge", "main", "--to", current)
	if err != nil {
		t.Fatalf("purge through node %d (not the leader): %v\n%s", other.ID, err, out)
	}
	if !strings.Contains(out, "oldest file now "+readingFile) {
		t.Fatalf("purge to %s with a replica reading %s on follower node %d: %s", current, reading, follower.ID, out)
	}
	t.Logf("purge to %s kept %s for the replica on node %d", current, readingFile, follower.ID)
}

// getUpstreamReplicas returns the positions of the replicas connected anywhere.
func getUpstreamReplicas(ctx context.Context, t *testing.T, n *flotillatest.Node, name string) []string {
	t.Helper()
	out, err := n.CLI(ctx, "upstream", "get", name)
	if err != nil {
		t.Fatal(err)
	}
	var pos []string
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, " at flotilla-bin."); i >= 0 {
			f := strings.Fields(l[i+4:])
			pos = append(pos, f[0])
		}
	}
	return pos
}
