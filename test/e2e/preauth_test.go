package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// rssBytes reads a process's resident set size from /proc.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// preAuthAttack opens one connection that never logs in: it reads the greeting,
// then sends what kind says, and holds the connection until ctx ends.
func preAuthAttack(ctx context.Context, addr, kind string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	greeting := make([]byte, 4096)
	if _, err := c.Read(greeting); err != nil {
		return
	}
	switch kind {
	case "announce": // 16 MiB announced, a few bytes sent
		_, _ = c.Write([]byte{0xff, 0xff, 0xff, 1, 0x85, 0xa6, 0, 0})
	case "name": // a handshake response whose user name is 1 MiB
		body := append([]byte{0x85, 0xa6, 0x0f, 0, 0, 0, 0, 1, 33}, make([]byte, 23)...)
		body = append(body, bytes.Repeat([]byte{'u'}, 1<<20)...)
		body = append(body, 0, 0)
		_, _ = c.Write(append([]byte{byte(len(body)), byte(len(body) >> 8), byte(len(body) >> 16), 1}, body...))
	case "trickle": // just under the pre-login limit, never finished
		_, _ = c.Write(append([]byte{0x00, 0x40, 0, 1}, make([]byte, 16000)...))
	}
	buf := make([]byte, 512)
	for ctx.Err() == nil {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// TestPreAuthFloodCostsNoMemory reproduces the attack of issue 22 against a real
// node: waves of 60 connections that never log in (announcing 16 MiB packets,
// sending 1 MiB user names, or holding a packet just under the pre-login limit).
// The node's RSS grows by less than 64 MiB, a MariaDB replica is served the whole
// time and ends equal to its master, and no log line exceeds 4 KiB.
func TestPreAuthFloodCostsNoMemory(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	fl := startRelayNode(ctx, t, filepath.Join(dir, "flotilla"), master)
	r := startReplica(ctx, t, filepath.Join(dir, "replica"), 11)
	changeMaster(ctx, t, r, fl, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	// The first workload warms the node's caches (ingest alone grows RSS by
	// about 130 MiB): the baseline is taken after it.
	if _, err := mariadbtest.RunWorkload(ctx, master, 0); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, "replica", master, r, 2*time.Minute)
	base := rssBytes(t, fl.PID())

	var peak atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sampleCtx.Err() == nil {
			if v := rssBytes(t, fl.PID()); v > peak.Load() {
				peak.Store(v)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	attackCtx, stopAttack := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for wave := range 5 {
		for i := range 60 {
			kind := "announce"
			switch {
			case i >= 40:
				kind = "name"
			case wave%2 == 1 && i < 20:
				kind = "trickle"
			}
			wg.Add(1)
			go func() { defer wg.Done(); preAuthAttack(attackCtx, fl.MySQLAddr, kind) }()
		}
		if wave == 2 { // the replica is served while the attack goes on
			if _, err := mariadbtest.RunWorkload(ctx, master, 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitCaughtUp(ctx, t, "replica", master, r, 2*time.Minute)
	stopAttack()
	wg.Wait()
	stopSampling()
	<-sampled
	sameData(t, "replica", checksums(ctx, t, master), checksums(ctx, t, r))
	grew := peak.Load() - base
	t.Logf("RSS %d MiB before the flood, peak %d MiB during it (+%d MiB)", base>>20, peak.Load()>>20, grew>>20)
	if grew >= 64<<20 {
		t.Fatalf("connections that never logged in grew the node's RSS by %d MiB (limit 64 MiB)", grew>>20)
	}
	b, err := os.ReadFile(filepath.Join(fl.Dir, "flotilla.log"))
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range strings.Split(string(b), "\n") {
		if len(l) > 4096 {
			t.Fatalf("log line %d is %d bytes: %.200s…", i+1, len(l), l)
		}
	}
}
