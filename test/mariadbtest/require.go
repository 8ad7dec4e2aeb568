package mariadbtest

import (
	"os"
	"strings"
	"testing"
)

// RequireTools gates end-to-end tests on the MariaDB binaries. Developer
// machines without MariaDB skip, so `go test ./...` stays usable anywhere,
// but CI (CI set) fails loudly: a silently skipped suite there would hide
// that the relay was never tested against a real server.
func RequireTools(t testing.TB) {
	t.Helper()
	var missing []string
	for _, tool := range []string{"mariadbd", "mariadb-install-db", "mariadb-binlog"} {
		if _, err := lookTool(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "MariaDB tools not found: " + strings.Join(missing, ", ") + "; run scripts/ensure-mariadb.sh to install them"
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (required because CI is set)", msg)
	}
	t.Skipf("%s", msg)
}
