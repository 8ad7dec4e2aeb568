// Package flotillatest runs Flotilla nodes as separate processes for end-to-end tests,
// the way operators run them, so that kill -9 and restarts are real.
package flotillatest

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

var buildOnce sync.Once
var buildPath string
var buildErr error

// Binary returns the flotilla binary to test: $FLOTILLA_BIN (the Makefile sets it to
// the binary it just built), or one built once per test process.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("FLOTILLA_BIN"); p != "" {
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("FLOTILLA_BIN=%s: %v", p, err)
		}
		return p
	}
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		dir, err := os.MkdirTemp("", "flotilla-bin")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "flotilla")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/flotilla")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// Node is a Flotilla node process.
type Node struct {
	t         testing.TB
	bin       string
	Dir       string
	MySQLAddr string
	AdminAddr string
	RaftAddr  string
	// AdminListen and RaftListen, when set, are where the node binds while the
	// cluster reaches it at AdminAddr and RaftAddr (a fault-injecting proxy stands
	// there); CLI calls go to AdminListen directly.
	AdminListen string
	RaftListen  string
	// ID is the node id; Join the admin addresses it joins through on first start.
	ID   uint64
	Join []string
	// Token is the admin token the node is started with (FLOTILLA_TOKEN) and CLI
	// calls present; nodes join each other with it. "" starts the node without one.
	Token string
	// Args are extra `serve` flags; CLIArgs extra global flags of CLI calls (TLS).
	Args    []string
	CLIArgs []string
	// ServeDefaults starts the node with serve's defaults where test nodes differ
	// (small segments, no memory pretouch, debug logs): benchmarks measure what a
	// deployment runs.
	ServeDefaults bool
	// Env is extra environment of the node process (KEY=VALUE).
	Env     []string
	cmd     *exec.Cmd
	done    chan struct{}
	logFile *os.File
}

// StartNode starts a one-node cluster with its data in dir, on free loopback ports.
func StartNode(ctx context.Context, t testing.TB, dir string) *Node {
	t.Helper()
	n := NewNode(t, dir, 1)
	n.Start(ctx)
	return n
}

// StartCluster starts size nodes under dir: node 1 bootstraps the cluster, the others
// join it through node 1's admin API, one after the other.
func StartCluster(ctx context.Context, t testing.TB, dir string, size int, args ...string) []*Node {
	t.Helper()
	return StartClusterWith(ctx, t, dir, size, func(n *Node) { n.Args = args })
}

// StartClusterWith is StartCluster with setup run on each node before it starts.
func StartClusterWith(ctx context.Context, t testing.TB, dir string, size int, setup func(*Node)) []*Node {
	t.Helper()
	var nodes []*Node
	for i := 1; i <= size; i++ {
		n := NewNode(t, filepath.Join(dir, fmt.Sprintf("node%d", i)), uint64(i))
		setup(n)
		if i > 1 {
			n.Join = []string{nodes[0].AdminAddr}
		}
		n.Start(ctx)
		nodes = append(nodes, n)
	}
	// Joined nodes follow the metadata group until the placement controller promotes
	// them: wait for min(size, 3) voters, so a test's faults meet a full quorum.
	want := min(size, 3)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		out, err := nodes[0].CLI(ctx, "status", "-o", "json")
		var st struct {
			MetaVoters []string `json:"metaVoters"`
		}
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && len(st.MetaVoters) == want {
			return nodes
		}
		if time.Now().After(deadline) {
			t.Fatalf("the metadata group did not reach %d voters within a minute: %v %s", want, err, out)
		}
	}
}

// NewNode prepares node id with its data in dir, on free loopback ports, without
// starting it; it is killed when the test ends.
func NewNode(t testing.TB, dir string, id uint64) *Node {
	t.Helper()
	n := &Node{t: t, bin: Binary(t), Dir: dir, ID: id, Token: TestToken}
	var ports [3]int
	for i := range ports {
		p, err := mariadbtest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	n.MySQLAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	n.AdminAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
	n.RaftAddr = fmt.Sprintf("127.0.0.1:%d", ports[2])
	t.Cleanup(func() { n.Kill() })
	return n
}

// Start (re)starts the process on the node's data and ports and waits until its
// admin API answers; it fails the test otherwise.
func (n *Node) Start(ctx context.Context) {
	n.t.Helper()
	if err := n.TryStart(ctx); err != nil {
		n.t.Fatal(err)
	}
}

// TryStart is Start returning an error (with the log's tail) instead of failing the
// test, for tests of refused start-ups.
func (n *Node) TryStart(ctx context.Context) error {
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return err
	}
	lf, err := os.OpenFile(filepath.Join(n.Dir, "flotilla.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	n.logFile = lf
	args := []string{"serve", "--node-id", fmt.Sprint(n.ID), "--data", filepath.Join(n.Dir, "data"), "--mysql-addr", n.MySQLAddr,
		"--admin-addr", n.AdminAddr, "--raft-addr", n.RaftAddr}
	if !n.ServeDefaults {
		args = append(args, "--log-level", "debug",
			"--segment-size", "1048576", // small segments: end-to-end tests cross part boundaries
			// Tests start nodes by the hundred: serve's default faults in 256 MiB at
			// each start (about a second on a VM).
			"--memory-pretouch", "0",
			// and up to 512 MiB of spare raft payload files each.
			"--raft-payload-reserve", "0")
	}
	if len(n.Join) > 0 {
		args = append(args, "--join", strings.Join(n.Join, ","))
	}
	if n.AdminListen != "" {
		args = append(args, "--admin-listen-addr", n.AdminListen)
	}
	if n.RaftListen != "" {
		args = append(args, "--raft-listen-addr", n.RaftListen)
	}
	n.cmd = exec.Command(n.bin, append(args, n.Args...)...)
	n.cmd.Env = n.env()
	n.cmd.Stdout, n.cmd.Stderr = lf, lf
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		return fmt.Errorf("start flotilla: %w", err)
	}
	n.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(n.cmd, n.done)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := n.CLI(ctx, "status"); err == nil {
			return nil
		}
		select {
		case <-n.done:
			return fmt.Errorf("flotilla exited during start-up; log:\n%s", n.LogTail(40))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("flotilla admin API did not answer within 60s; log:\n%s", n.LogTail(40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Signal sends sig to the node's process group (SIGSTOP and SIGCONT freeze and thaw
// it, as a stalled machine would be). A process that has exited gets nothing: its pid,
// reaped, may already name another process group (this machine's pids wrap at 32768,
// and the suites run side by side). A process reaped between the check and the
// signal leaves a window of microseconds, not the seconds to minutes it was.
func (n *Node) Signal(sig syscall.Signal) {
	if n.cmd != nil && n.cmd.Process != nil && n.Running() {
		_ = syscall.Kill(-n.cmd.Process.Pid, sig)
	}
}

// PID is the running process's id (benchmarks read its memory and CPU).
func (n *Node) PID() int { return n.cmd.Process.Pid }

// Running reports whether the process is alive.
func (n *Node) Running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Stop asks the process to shut down (SIGTERM) and waits for it, up to timeout; it
// returns the process's exit error (nil for a clean exit).
func (n *Node) Stop(timeout time.Duration) error {
	if n.cmd == nil || n.cmd.Process == nil {
		return nil
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(timeout):
		return fmt.Errorf("flotilla did not exit within %v of SIGTERM; log:\n%s", timeout, n.LogTail(30))
	}
	err := n.cmd.ProcessState.ExitCode()
	n.cmd = nil
	if n.logFile != nil {
		n.logFile.Close()
	}
	if err != 0 {
		return fmt.Errorf("flotilla exited with status %d after SIGTERM; log:\n%s", err, n.LogTail(30))
	}
	return nil
}

// Kill stops the process with SIGKILL, like a crash.
func (n *Node) Kill() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	if n.Running() { // else its pid may name another process group (see Signal)
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-n.done
	n.cmd = nil
	if n.logFile != nil {
		n.logFile.Close()
	}
}

// CLI runs a flotilla admin command against this node and returns its stdout; the
// error carries stderr.
func (n *Node) CLI(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	global := append([]string{"--admin", cmp.Or(n.AdminListen, n.AdminAddr)}, n.CLIArgs...)
	cmd := exec.CommandContext(ctx, n.bin, append(global, args...)...)
	cmd.Env = n.env()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("flotilla %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// CLICombined is CLI returning stdout and stderr together (progress displays write
// to stderr).
func (n *Node) CLICombined(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	global := append([]string{"--admin", cmp.Or(n.AdminListen, n.AdminAddr)}, n.CLIArgs...)
	cmd := exec.CommandContext(ctx, n.bin, append(global, args...)...)
	cmd.Env = n.env()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestToken is the admin token test nodes share unless a test sets another.
const TestToken = "flotilla-test-token"

// env is the environment of the node's process and of CLI calls: the test's own,
// with FLOTILLA_TOKEN set to the node's token (or removed).
func (n *Node) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLOTILLA_TOKEN=") {
			env = append(env, kv)
		}
	}
	if n.Token != "" {
		env = append(env, "FLOTILLA_TOKEN="+n.Token)
	}
	return append(env, n.Env...)
}

// LogTail returns the last lines of the node's log.
func (n *Node) LogTail(lines int) string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "flotilla.log"))
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// LogGrep returns the node's log lines that contain any of the words, for a failing
// test to show what the node decided.
func (n *Node) LogGrep(words ...string) string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "flotilla.log"))
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// MySQLPort is the port of the node's MySQL front end.
func (n *Node) MySQLPort() string {
	_, p, _ := net.SplitHostPort(n.MySQLAddr)
	return p
}

// AddMetrics gives the node, from its next start, a metrics (and health) endpoint on
// a free loopback port, appended to its Args, and returns its address.
func (n *Node) AddMetrics() string {
	n.t.Helper()
	p, err := mariadbtest.FreePort()
	if err != nil {
		n.t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	n.Args = append(n.Args, "--metrics-addr", addr)
	return addr
}

// AddMySQLFlavorPort gives the node, from its next start, a second front-end port
// that greets as MySQL version (mysql=ADDR,version=V; "" announces the upstream's
// own version) and returns its address. MySQL upstreams are then served only there.
func (n *Node) AddMySQLFlavorPort(version string) string {
	n.t.Helper()
	p, err := mariadbtest.FreePort()
	if err != nil {
		n.t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	spec := "mysql=" + addr
	if version != "" {
		spec += ",version=" + version
	}
	n.Args = append(n.Args, "--mysql-addr", spec)
	return addr
}
