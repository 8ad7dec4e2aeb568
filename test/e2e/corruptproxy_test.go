package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// flipProxy forwards TCP connections to a master and flips one byte of the master's
// stream, once, flipAt bytes into the first connection that carries that many.
type flipProxy struct {
	lis     net.Listener
	target  string
	flipAt  int64
	flipped atomic.Bool
	wg      sync.WaitGroup
}

func startFlipProxy(t *testing.T, target string, flipAt int64) *flipProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flipProxy{lis: lis, target: target, flipAt: flipAt}
	t.Cleanup(func() { lis.Close(); p.wg.Wait() })
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c) }()
		}
	}()
	return p
}

func (p *flipProxy) serve(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	buf := make([]byte, 64<<10)
	var seen int64
	for {
		n, err := up.Read(buf)
		if n > 0 {
			if !p.flipped.Load() && seen+int64(n) > p.flipAt {
				buf[p.flipAt-seen] ^= 0x5a
				p.flipped.Store(true)
			}
			seen += int64(n)
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestCorruptEventFromMasterIsFetchedAgain: a byte of the master's binlog stream is
// flipped on the way to Flotilla (inside a large row event). The syncer finds the
// event's CRC32 wrong, counts it, reconnects and fetches it again: a replica ends
// with exactly the master's data, so the damaged bytes were never stored.
func TestCorruptEventFromMasterIsFetchedAgain(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	// The history opens with a 4 MB value that nothing changes later: 2 MB into the
	// stream lands inside it, and damage stored there would stay visible.
	for _, q := range []string{
		"CREATE DATABASE flipcheck",
		"CREATE TABLE flipcheck.t (id INT PRIMARY KEY, v LONGBLOB)",
		"INSERT INTO flipcheck.t VALUES (1, REPEAT(SHA2('flotilla', 256), 65536))",
	} {
		if err := master.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if _, err := mariadbtest.RunWorkload(ctx, master, 0); err != nil {
		t.Fatal(err)
	}
	proxy := startFlipProxy(t, master.Addr(), 2<<20)
	fl := flotillatest.StartNode(ctx, t, filepath.Join(dir, "flotilla"))
	if out, err := fl.CLI(ctx, "upstream", "add", "main", "--source", proxy.lis.Addr().String(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err != nil {
		t.Fatalf("upstream add: %v\n%s", err, out)
	}
	r := startReplica(ctx, t, filepath.Join(dir, "replica"), 11)
	changeMaster(ctx, t, r, fl, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	if _, err := mariadbtest.RunWorkload(ctx, master, 1); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, "replica", master, r, 3*time.Minute)
	sameData(t, "replica", checksums(ctx, t, master), checksums(ctx, t, r))
	want, err := mariadbtest.TableChecksums(ctx, master, "flipcheck")
	if err != nil {
		t.Fatal(err)
	}
	got, err := mariadbtest.TableChecksums(ctx, r, "flipcheck")
	if err != nil {
		t.Fatal(err)
	}
	sameData(t, "replica (the row the flip hit)", want, got)
	if !proxy.flipped.Load() {
		t.Fatal("the proxy never flipped a byte: the stream was shorter than expected")
	}
	out, err := fl.CLI(ctx, "upstream", "get", "main", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Group struct {
			CorruptEvents string `json:"corruptEvents"`
		} `json:"group"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.Group.CorruptEvents != "1" {
		t.Fatalf("status counts %q corrupt events, want 1 (the flipped one); log:\n%s", st.Group.CorruptEvents, fl.LogTail(20))
	}
}
