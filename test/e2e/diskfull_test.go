package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// A node whose data directory runs short of space (below --min-free-disk; the test
// takes the space with a real file on the same filesystem) stops its group replica
// instead of failing a raft or segment write: it keeps running and answering, says
// why in /readyz, node list, cluster health and the metrics, and once the space is
// back it starts the replica from its disk, catches up with what the master wrote
// meanwhile, and the replica connected to it ends with the master's data.
func TestFullDiskSuspendsAndResumes(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	free, err := mariadbtest.FreeBytes(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The reserve sits a quarter of the free space below it (at least 512 MiB, at
	// most 8 GiB): other suites write to this filesystem meanwhile (make test runs
	// the Ansible deployment beside this package), and must not take the node below
	// its reserve before the filler does. Fill allocates (fallocate) where the
	// filesystem can, so a large filler costs nothing on a disk (on tmpfs it takes
	// memory: hence the cap).
	if free < 2<<30 {
		t.Fatalf("the test needs 2 GiB free in %s, has %d bytes", dir, free)
	}
	reserve := free - max(uint64(512<<20), min(free/4, 8<<30))
	p, err := mariadbtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", p)
	fl := flotillatest.NewNode(t, filepath.Join(dir, "flotilla"), 1)
	fl.Args = []string{"--metrics-addr", metricsAddr, "--min-free-disk", fmt.Sprint(reserve)}
	fl.Start(ctx)
	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	if out, err := fl.CLI(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	replica := startReplica(ctx, t, filepath.Join(dir, "replica"), 11)
	changeMaster(ctx, t, replica, fl, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	if _, err := mariadbtest.RunWorkload(ctx, master, 0); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, "replica", master, replica, 2*time.Minute)

	// The fillers leave 512 MiB below the reserve, measured when each is made: others
	// may write or free space at any time (a suite beside this one ends and removes
	// its data, as CI once saw), so every poll while the disk must stay short tops
	// them up once less than 256 MiB below the reserve is left.
	var fillers []string
	topUp := func() {
		t.Helper()
		now, err := mariadbtest.FreeBytes(dir)
		if err != nil {
			t.Fatal(err)
		}
		if int64(now)+256<<20 > int64(reserve) {
			path := filepath.Join(dir, fmt.Sprintf("filler%d", len(fillers)))
			if err := mariadbtest.Fill(path, int64(now)-int64(reserve)+512<<20); err != nil {
				t.Fatal(err)
			}
			fillers = append(fillers, path)
		}
	}
	topUp()
	poll := func(what string, ok func() (bool, string)) {
		t.Helper()
		var last string
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			var done bool
			if done, last = ok(); done {
				return
			}
		}
		t.Fatalf("%s: not within a minute; last: %s\n%s", what, last, fl.LogTail(20))
	}
	poll("the node reports the full disk", func() (bool, string) {
		topUp()
		code, body, err := httpGet("http://" + metricsAddr + "/readyz")
		list, _ := fl.CLI(ctx, "node", "list")
		_, metrics, _ := httpGet("http://" + metricsAddr + "/metrics")
		v, _ := metricValue(metrics, "flotilla_storage_suspended")
		return err == nil && code == http.StatusServiceUnavailable && strings.Contains(body, "below min_free_disk") &&
			strings.Contains(list, "disk-low") && v == 1, fmt.Sprintf("readyz %d %q, node list %q, suspended %v", code, body, list, v)
	})
	poll("the group replica stops", func() (bool, string) {
		topUp()
		out, _ := fl.CLI(ctx, "upstream", "get", "main")
		return strings.Contains(fl.LogTail(200), "group replica stopped, its data kept"), out
	})
	topUp()
	if out, err := fl.CLI(ctx, "cluster", "health"); err == nil || !strings.Contains(out, "below min_free_disk") {
		t.Fatalf("cluster health with a full disk: %v\n%s", err, out)
	}
	// The master goes on writing; the node keeps running and answering.
	if _, err := mariadbtest.RunWorkload(ctx, master, 1); err != nil {
		t.Fatal(err)
	}
	if !fl.Running() {
		t.Fatalf("the node exited with its disk short of space:\n%s", fl.LogTail(30))
	}

	for _, path := range fillers {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	poll("the node resumes", func() (bool, string) {
		code, body, err := httpGet("http://" + metricsAddr + "/readyz")
		return err == nil && code == http.StatusOK, fmt.Sprintf("readyz %d %q %v", code, body, err)
	})
	waitCaughtUp(ctx, t, "replica", master, replica, 2*time.Minute)
	sameData(t, "replica", checksums(ctx, t, master), checksums(ctx, t, replica))
	if out, err := fl.CLI(ctx, "cluster", "health", "--wait", "30s"); err != nil {
		t.Fatalf("cluster health after the space returned: %v\n%s", err, out)
	}
	if log := fl.LogGrep("panic"); log != "" {
		t.Fatalf("the node's log has a panic:\n%s", log)
	}
}
