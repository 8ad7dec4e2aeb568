package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/client"

	"github.com/flotilla-relay/flotilla/test/flotillatest"
)

// checkOddQueries sends, as a logged-in replica user, statements whose text used to
// crash the whole node (offsets from an upper-cased copy, invalid UTF-8, unterminated
// comments). Each gets an answer or an error; the node must still be alive afterwards,
// which the caller then proves by replicating through it.
func checkOddQueries(ctx context.Context, t *testing.T, fl *flotillatest.Node) {
	t.Helper()
	c, err := client.ConnectWithTimeout(fl.MySQLAddr, replicaUser, replicaPass, "", 10*time.Second)
	if err != nil {
		t.Fatalf("log in as the replica user: %v", err)
	}
	defer c.Close()
	for _, q := range []string{
		"SELECT \xff\xff\xff\xff\xff\xff AS x",
		"SHOW VARIABLES \xff\xff\xff\xff\xff\xff\xff\xff LIKE",
		"ſelect ııııı AS ß",
		"SELECT 1 /* never closed",
		"SET @a='unterminated",
		"SELECT " + strings.Repeat("/**/", 1<<15),
	} {
		if _, err := c.Execute(q); err != nil && strings.Contains(err.Error(), "connection") {
			t.Fatalf("%q broke the connection: %v", q, err)
		}
	}
	if _, err := c.Execute("SELECT @@server_id"); err != nil {
		t.Fatalf("the session must survive odd statements: %v", err)
	}
	if _, err := fl.CLI(ctx, "status"); err != nil {
		t.Fatalf("node died after odd queries: %v\n%s", err, fl.LogTail(30))
	}
}
