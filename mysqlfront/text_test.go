package mysqlfront

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/placement"
)

func TestNormalizeQuery(t *testing.T) {
	cases := map[string]string{
		"  SELECT\t\n 1 ;; ":                            "SELECT 1",
		"/* c */ SET /*x*/ @a = 'a  b' ;":               "SET @a = 'a  b'",
		"SELECT 1 /* never closed":                      "SELECT 1",
		"SELECT 'a /* b */ c'":                          "SELECT 'a /* b */ c'",
		"SELECT 'it\\'s  x'":                            "SELECT 'it\\'s  x'",
		"SELECT 1 -- a comment\n, 2":                    "SELECT 1 , 2",
		"# only a comment":                              "",
		"SELECT `a  b`":                                 "SELECT `a  b`",
		"SELECT 'unterminated":                          "SELECT 'unterminated",
		"/*!40101 SET NAMES utf8 */ SHOW MASTER STATUS": "SHOW MASTER STATUS",
	}
	for in, want := range cases {
		if got := normalizeQuery(in); got != want {
			t.Errorf("normalizeQuery(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOddQueryTextNeverPanics feeds the statements that used to cut query text at
// offsets taken from an upper-cased copy: letters whose upper case is shorter or
// longer (ı, ſ, ß, ﬀ), invalid UTF-8 (upper-cased to the 3-byte U+FFFD), unterminated
// comments and quotes.
func TestOddQueryTextNeverPanics(t *testing.T) {
	odd := []string{
		"SELECT \xff\xff\xff\xff\xff\xff AS x",
		"SELECT \xff\xff\xff\xff AS",
		"SHOW VARIABLES \xff\xff\xff\xff\xff LIKE 'x'",
		"SHOW VARIABLES \xff\xff\xff\xff\xff\xff\xff\xff LIKE",
		"SELECT ııııııııı AS y",
		"ſelect 1", "ſet @a=1", "SET ſ", "SELECT ßßßß LIMIT 1", "SELECT ﬀﬀﬀ AS ﬀ",
		"SELECT 1 /*", "SELECT '", "SET @a='", "/*", "'", "SHOW VARIABLES LIKE '",
		"SELECT \xc0 LIMIT 1", "SET \xff=\xff", "SELECT @@\xff", "SELECT @\xff AS \xff",
		"SELECT " + strings.Repeat("\xff", 1<<16) + " AS x",
	}
	ss := newTestSession()
	for _, q := range odd {
		_, err := ss.query(q)
		var me *mysql.MyError
		if err != nil && !errors.As(err, &me) {
			t.Errorf("%q: error is not a MySQL error: %v", q, err)
		}
		if err != nil && !utf8.ValidString(err.Error()) {
			t.Errorf("%q: error text is not valid UTF-8: %q", q, err.Error())
		}
	}
}

// TestLongQueryLinearTime: a megabyte of comment openers, quotes and spaces is
// answered in well under the time a quadratic scan would need (the loose bound keeps
// this a check of complexity, not of machine speed).
func TestLongQueryLinearTime(t *testing.T) {
	ss := newTestSession()
	for _, q := range []string{
		"SELECT " + strings.Repeat("/**/", 1<<18),
		"SELECT " + strings.Repeat(" ", 1<<20) + "1",
		"SET " + strings.Repeat("@a=1,", 1<<17) + "@b=2",
	} {
		start := time.Now()
		_, _ = ss.query(q)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("a %d-byte query took %v", len(q), d)
		}
	}
}

// panicRouter panics on every call: it stands in for any bug a client can reach.
type panicRouter struct{}

func (panicRouter) Metadata() (*placement.State, error) { panic("injected bug") }
func (panicRouter) Source(context.Context, *placement.Upstream) (Source, error) {
	panic("injected bug")
}

// TestPanicClosesOnlyThatConnection: a panic in a connection's goroutine is recovered
// and logged; the listener keeps accepting.
func TestPanicClosesOnlyThatConnection(t *testing.T) {
	logs := &lockedWriter{w: &strings.Builder{}}
	s := New(panicRouter{}, 1, slog.New(slog.NewTextHandler(logs, nil)))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Serve(ctx, lis) }()
	for i := 0; i < 3; i++ {
		_, err := client.ConnectWithTimeout(lis.Addr().String(), "repl", "pw", "", 5*time.Second)
		if err == nil {
			t.Fatal("login through a panicking router must fail")
		}
	}
	if !strings.Contains(logs.String(), "panic while serving a client") {
		t.Fatalf("the panic was not logged: %s", logs.String())
	}
}

// lockedWriter lets connection goroutines log into one buffer the test reads.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.(fmt.Stringer).String()
}
