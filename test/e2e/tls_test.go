package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-relay/flotilla/internal/tlstest"
	"github.com/flotilla-relay/flotilla/test/flotillatest"
	"github.com/flotilla-relay/flotilla/test/mariadbtest"
)

// TestTLSEverywhere: a 3-node cluster whose raft traffic is mutual TLS and whose
// admin API takes only client certificates relays a master that accepts Flotilla's
// user only over TLS, to a MariaDB replica whose user Flotilla accepts only over TLS
// (MASTER_SSL=1), connected to a node that does not lead the group (the dump is
// relayed between nodes over TLS). Admin calls without a certificate are refused; a
// node with an open admin port off the loopback refuses to start; no password appears
// in any file of any node's data directory or log, and every file is private.
func TestTLSEverywhere(t *testing.T) {
	mariadbtest.RequireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	ca := tlstest.NewCA(t)
	admin := ca.Issue(t, "operator")
	cliTLS := []string{"--tls-ca", ca.CertFile, "--tls-cert", admin.CertFile, "--tls-key", admin.KeyFile}

	masterCert := ca.Issue(t, "master.example")
	master := startMasterWith(ctx, t, filepath.Join(dir, "master"), mariadbtest.Options{ServerID: 1,
		ExtraArgs: []string{"--ssl-ca=" + ca.CertFile, "--ssl-cert=" + masterCert.CertFile, "--ssl-key=" + masterCert.KeyFile}})
	// Flotilla's user on the master: TLS only, and created outside the binlog, so
	// that its password is nowhere in what Flotilla relays.
	const tlsUser, tlsPass = "flotilla_tls", "tls-up-secret"
	conn, err := master.DB().Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SET SESSION sql_log_bin=0",
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s' REQUIRE SSL", tlsUser, tlsPass),
		fmt.Sprintf("GRANT REPLICATION SLAVE, REPLICATION CLIENT, BINLOG MONITOR, SELECT ON *.* TO '%s'@'%%'", tlsUser),
		"SET SESSION sql_log_bin=1"} { // the session goes back to the pool
		if _, err := conn.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	conn.Close()

	nodes := flotillatest.StartClusterWith(ctx, t, filepath.Join(dir, "flotilla"), 3, func(n *flotillatest.Node) {
		p := ca.Issue(t, fmt.Sprintf("node%d", n.ID))
		n.Args = append(n.Args, "--tls-ca", ca.CertFile, "--tls-cert", p.CertFile, "--tls-key", p.KeyFile,
			"--mysql-tls-cert", p.CertFile, "--mysql-tls-key", p.KeyFile)
		n.CLIArgs = cliTLS
		n.Token = "" // certificates alone: nodes join, and operators call, with them
	})

	// Without a client certificate the admin API refuses, naming what it wants.
	bare := *nodes[0]
	bare.CLIArgs = []string{"--tls-ca", ca.CertFile}
	if out, err := bare.CLI(ctx, "upstream", "list"); err == nil || !strings.Contains(err.Error(), "client certificate") {
		t.Fatalf("an admin call without a client certificate must be refused: %v %s", err, out)
	}

	// Without TLS toward the master, its user is refused (REQUIRE SSL): the check at
	// add names the master's answer.
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "plain", "--source", master.Addr(), "--user", tlsUser, "--password", tlsPass,
		"--replica-user", replicaUser, "--replica-password", replicaPass); err == nil {
		t.Fatalf("a REQUIRE SSL user must not connect without TLS: %s", out)
	}
	// A wrong server name fails verification.
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "badname", "--source", master.Addr(), "--user", tlsUser, "--password", tlsPass,
		"--source-tls-ca", ca.CertFile, "--source-tls-server-name", "other.example",
		"--replica-user", replicaUser, "--replica-password", replicaPass); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a master certificate for another name must be refused: %v %s", err, out)
	}
	if out, err := nodes[0].CLI(ctx, "upstream", "add", "main", "--source", master.Addr(), "--user", tlsUser, "--password", tlsPass,
		"--source-tls-ca", ca.CertFile, "--source-tls-server-name", "master.example",
		"--replica-user", replicaUser, "--replica-password", replicaPass, "--replica-require-tls"); err != nil {
		t.Fatalf("upstream add over TLS: %v\n%s", err, out)
	}
	leader, _ := waitLeader(ctx, t, nodes, "main")
	via := nodes[0]
	for _, n := range nodes {
		if n.ID != leader {
			via = n
			break
		}
	}
	r := startReplica(ctx, t, filepath.Join(dir, "replica"), 11)
	// Without TLS the replica user is refused.
	changeMaster(ctx, t, r, via, replicaUser, replicaPass, "MASTER_USE_GTID=slave_pos")
	waitSlaveError(ctx, t, r, "Access denied for user 'repl'")
	if err := r.Exec(ctx, "STOP SLAVE"); err != nil {
		t.Fatal(err)
	}
	changeMaster(ctx, t, r, via, replicaUser, replicaPass,
		fmt.Sprintf("MASTER_USE_GTID=slave_pos, MASTER_SSL=1, MASTER_SSL_CA='%s', MASTER_SSL_VERIFY_SERVER_CERT=1", ca.CertFile))
	if _, err := mariadbtest.RunWorkload(ctx, master, 0); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, "TLS replica", master, r, 2*time.Minute)
	sameData(t, "TLS replica", checksums(ctx, t, master), checksums(ctx, t, r))
	if cipher, err := r.QueryValue(ctx, "SHOW STATUS LIKE 'Ssl_cipher'"); err == nil && cipher == "" {
		t.Log("replica's own status shows no cipher (it reports its client side elsewhere)")
	}

	// Secrets: no file under any node's data directory or log holds a password, and
	// every file and directory is private to Flotilla's user.
	for _, n := range nodes {
		checkNoSecrets(t, n.Dir, tlsPass, replicaPass)
	}

	// An admin API reachable from the network without credentials: refused at start.
	open := flotillatest.NewNode(t, filepath.Join(dir, "open"), 1)
	open.AdminAddr = strings.Replace(open.AdminAddr, "127.0.0.1", "0.0.0.0", 1)
	if err := open.TryStart(ctx); err == nil || !strings.Contains(err.Error(), "not a loopback address") {
		t.Fatalf("a node with an open admin API off the loopback must refuse to start, naming why: %v", err)
	}
}

// waitSlaveError waits until the replica's IO thread reports an error containing want.
func waitSlaveError(ctx context.Context, t *testing.T, r *mariadbtest.Server, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := r.SlaveStatus(ctx)
		if err == nil && strings.Contains(st["Last_IO_Error"], want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica never reported error %s: %v %v", want, st["Last_IO_Error"], err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkNoSecrets fails if any file under dir contains one of the secrets, or is
// readable by anyone but its owner.
func checkNoSecrets(t *testing.T, dir string, secrets ...string) {
	t.Helper()
	data := filepath.Join(dir, "data")
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if strings.HasPrefix(path, data) && info.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: Flotilla's files must be private (0600, directories 0700)", path, info.Mode().Perm())
		}
		if d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s contains a password in clear", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
