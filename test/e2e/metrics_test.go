package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/buildinfo"
	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// httpGet returns the status and body of a GET.
func httpGet(url string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metricValue sums the samples of metric whose labels contain every label given.
func metricValue(body, metric string, labels ...string) (float64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, metric+"{") && !strings.HasPrefix(line, metric+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum, found = sum+v, true
		}
	}
	return sum, found
}

// TestMetricsHealthAndLogs: /readyz is 503 while a node waits to join and 200 once
// it has; during a replicated workload /metrics shows the ingest counters moving,
// the lag back at 0 and the connected replica; every log line is JSON carrying the
// node id, and lines about a group carry its upstream and group id.
func TestMetricsHealthAndLogs(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	port := func() string {
		p, err := mariadbtest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("127.0.0.1:%d", p)
	}
	m1, m2 := port(), port()
	n1 := flotillatest.NewNode(t, filepath.Join(dir, "n1"), 1)
	n1.Args = []string{"--metrics-addr", m1, "--log-format", "json", "--memory-pretouch", "64M"}
	n2 := flotillatest.NewNode(t, filepath.Join(dir, "n2"), 2)
	n2.Args = []string{"--metrics-addr", m2, "--log-format", "json"}
	n2.Join = []string{n1.AdminAddr} // not up yet: node 2 waits to join
	started := make(chan error, 1)
	go func() { started <- n2.TryStart(ctx) }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code, body, err := httpGet("http://" + m2 + "/readyz")
		if err == nil && code == http.StatusServiceUnavailable && strings.Contains(body, "joining") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz of a node waiting to join: %d %q %v", code, body, err)
		}
	}
	if code, _, err := httpGet("http://" + m2 + "/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz while joining: %d %v", code, err)
	}
	n1.Start(ctx)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	// serve runs itself again with the runtime returning memory lazily (keeping its
	// process id and name), and faults in the heap it was asked to.
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", n1.PID()))
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", n1.PID()))
	var godebug []string
	for _, kv := range bytes.Split(env, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("GODEBUG=")); ok {
			godebug = append(godebug, string(v))
		}
	}
	name := filepath.Base(flotillatest.Binary(t))
	name = name[:min(len(name), 15)] // the kernel keeps 15 bytes of a process name
	if len(godebug) != 1 || !slices.Contains(strings.Split(godebug[0], ","), "madvdontneed=0") || strings.TrimSpace(string(comm)) != name {
		t.Fatalf("a node's process is named %q and has GODEBUG %q; want %q, with one GODEBUG holding madvdontneed=0", comm, godebug, name)
	}
	if l := n1.LogGrep("memory_pretouch"); !strings.Contains(l, `"bytes":67108864`) || !strings.Contains(l, `"huge_page_bytes":`) || !strings.Contains(l, `"transparent_hugepage":`) {
		t.Fatalf("--memory-pretouch 64M: the log says %q, want the bytes, and the huge pages and the kernel's setting", l)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		code, body, err := httpGet("http://" + m2 + "/readyz")
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz after joining: %d %q %v", code, body, err)
		}
	}

	master := startMaster(ctx, t, filepath.Join(dir, "master"))
	if _, err := mariadbtest.RunWorkload(ctx, master, 0); err != nil {
		t.Fatal(err)
	}
	// --wait follows the initial copy of what the master holds until caught up.
	out, err := n1.CLICombined(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", upstreamUser, "--password", upstreamPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass, "--wait")
	if err != nil || !strings.Contains(out, "initial copy of main: caught up") {
		t.Fatalf("upstream add --wait: %v\n%s", err, out)
	}
	// status --watch redraws until interrupted.
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	out, _ = n1.CLICombined(wctx, "status", "--watch", "--interval", "300ms")
	wcancel()
	if strings.Count(out, "every 300ms") < 2 || !strings.Contains(out, "main") {
		t.Fatalf("status --watch must redraw the status: %q", out)
	}
	leader, _ := waitLeader(ctx, t, []*flotillatest.Node{n1, n2}, "main")
	// catch-up follows the group's members until each holds what the leader holds.
	if out, err := n2.CLICombined(ctx, "upstream", "catch-up", "main"); err != nil || !strings.Contains(out, "catch-up of main: every member caught up (2 members") {
		t.Fatalf("upstream catch-up: %v\n%s", err, out)
	}
	lm := m1
	ln := n1
	if leader == 2 {
		lm, ln = m2, n2
	}
	r := startReplica(ctx, t, filepath.Join(dir, "replica"), 11)
	changeMaster(ctx, t, r, ln, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	scrape := func() string {
		code, body, err := httpGet("http://" + lm + "/metrics")
		if err != nil || code != http.StatusOK {
			t.Fatalf("/metrics: %d %v", code, err)
		}
		return body
	}
	waitCaughtUp(ctx, t, "replica", master, r, 2*time.Minute)
	before, _ := metricValue(scrape(), "flotilla_ingest_transactions_total", `upstream="main"`)
	if _, err := mariadbtest.RunWorkload(ctx, master, 1); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, "replica", master, r, 2*time.Minute)
	var body string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		body = scrape()
		after, _ := metricValue(body, "flotilla_ingest_transactions_total", `upstream="main"`)
		lag, hasLag := metricValue(body, "flotilla_lag_seconds", `upstream="main"`)
		reps, _ := metricValue(body, "flotilla_connected_replicas", `upstream="main"`)
		if after > before && hasLag && lag == 0 && reps == 1 {
			t.Logf("E2E metrics: ingest transactions %v -> %v, lag %v s, connected replicas %v", before, after, lag, reps)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics did not show the workload: transactions %v -> %v, lag %v (%v), replicas %v\n%s", before, after, lag, hasLag, reps, body)
		}
	}
	// Idle, the master sends heartbeats (each second): the lag stays 0.
	for until := time.Now().Add(3500 * time.Millisecond); time.Now().Before(until); time.Sleep(300 * time.Millisecond) {
		if lag, _ := metricValue(scrape(), "flotilla_lag_seconds", `upstream="main"`); lag != 0 {
			t.Fatalf("lag %v s while the master is idle: heartbeats must not count as pending work", lag)
		}
	}
	for _, want := range []struct {
		metric string
		labels []string
	}{
		{"flotilla_ingest_bytes_total", []string{`upstream="main"`}},
		{"flotilla_ingest_events_total", []string{`upstream="main"`}},
		{"flotilla_proposal_seconds_count", []string{`upstream="main"`}},
		{"flotilla_sent_bytes_total", []string{`user="repl"`}},
		{"flotilla_dump_starts_total", []string{`upstream="main"`}},
		{"flotilla_applied_index", []string{`upstream="main"`}},
		{"flotilla_segment_bytes", []string{`upstream="main"`}},
		{"flotilla_mysql_sessions", nil},
		{"flotilla_build_info", []string{fmt.Sprintf(`max_cluster_version="%d"`, buildinfo.ClusterVersion)}},
		{"flotilla_cluster_version", nil},
		// The node writes to the operating system's files: its raft payloads go
		// there with direct I/O (0.39 left it off unseen), and so do segments.
		{"flotilla_raft_payload_direct_io", nil},
		{"flotilla_segment_direct_io", nil},
		{"go_goroutines", nil},
		{"process_resident_memory_bytes", nil},
	} {
		if v, ok := metricValue(body, want.metric, want.labels...); !ok || v <= 0 {
			t.Errorf("%s%v = %v (present %v), want > 0", want.metric, want.labels, v, ok)
		}
	}

	// JSON logs: every line parses, carries the node id; group lines carry both the
	// upstream and the group id.
	f, err := os.Open(filepath.Join(n1.Dir, "flotilla.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	lines, groupLines, tuned := 0, 0, false
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", sc.Text(), err)
		}
		lines++
		// serve sizes dragonboat's per-group queues before it starts raft.
		tuned = tuned || rec["msg"] == "dragonboat tuned for many small groups" && strings.Contains(fmt.Sprint(rec["settings"]), "receive queue 64")
		if _, ok := rec["node"]; !ok {
			t.Errorf("log line without the node id: %s", sc.Text())
		}
		if _, ok := rec["upstream"]; ok {
			groupLines++
			if _, ok := rec["group"]; !ok && rec["component"] != "admin" {
				t.Errorf("a line about upstream %v lacks its group id: %s", rec["upstream"], sc.Text())
			}
		}
	}
	if !tuned {
		t.Error("node 1 did not log the dragonboat settings it runs with")
	}
	if lines == 0 || groupLines == 0 {
		t.Fatalf("log of node 1: %d lines, %d about a group", lines, groupLines)
	}
}
