package mysqlfront

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"

	"github.com/flotilla-relay/flotilla/placement"
)

func sysvars(name string) (string, error) {
	if name == "binlog_checksum" {
		return "CRC32", nil
	}
	return "", fmt.Errorf("unknown system variable @@%s", name)
}

func TestParseSetReplicaStatements(t *testing.T) {
	// What a MariaDB 10.11 replica and mariadb-binlog send before the dump.
	cases := map[string]map[string]string{
		"@master_heartbeat_period= 1000000000":                       {"master_heartbeat_period": "1000000000"},
		"@master_binlog_checksum= @@global.binlog_checksum":          {"master_binlog_checksum": "CRC32"},
		"@master_binlog_checksum='NONE'":                             {"master_binlog_checksum": "NONE"},
		"@mariadb_slave_capability=4":                                {"mariadb_slave_capability": "4"},
		"@slave_connect_state='0-1-100,1-2-3'":                       {"slave_connect_state": "0-1-100,1-2-3"},
		"@slave_gtid_strict_mode=1, @slave_gtid_ignore_duplicates=0": {"slave_gtid_strict_mode": "1", "slave_gtid_ignore_duplicates": "0"},
		"@a = 'it''s', @b = NULL":                                    {"a": "it's", "b": "<null>"},
	}
	for stmt, want := range cases {
		as, err := parseSet(stmt, sysvars)
		if err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
		got := map[string]string{}
		for _, a := range as {
			v := a.Value
			if a.Null {
				v = "<null>"
			}
			got[a.Name] = v
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: @%s = %q, want %q", stmt, k, got[k], v)
			}
		}
	}
	for _, bad := range []string{"@a = 'open", "@a = @@nonexistent", "@a 1"} {
		if _, err := parseSet(bad, sysvars); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestParseDump(t *testing.T) {
	b := binary.LittleEndian.AppendUint32(nil, 1234)
	b = binary.LittleEndian.AppendUint16(b, dumpNonBlock)
	b = binary.LittleEndian.AppendUint32(b, 42)
	b = append(b, "flotilla-bin.000002"...)
	r, err := parseDump(b)
	if err != nil || r.Pos != 1234 || r.Flags != dumpNonBlock || r.ServerID != 42 || r.File != "flotilla-bin.000002" {
		t.Fatalf("parseDump = %+v, %v", r, err)
	}
	if _, err := parseDump(b[:9]); err == nil {
		t.Fatal("a short COM_BINLOG_DUMP must be refused")
	}
}

// fakeRouter serves no group: enough for queries that need only metadata.
type fakeRouter struct{ st *placement.State }

func (f fakeRouter) Metadata() (*placement.State, error) { return f.st, nil }
func (f fakeRouter) Source(context.Context, *placement.Upstream) (Source, error) {
	return nil, mysql.NewError(mysql.ER_UNKNOWN_ERROR, "not serving")
}

func newTestSession() *session {
	u := &placement.Upstream{Name: "main", ServerID: 7, DomainID: 3, Version: "10.11.6-MariaDB-log", GroupID: 2,
		ReplicaUsers: []placement.ReplicaUser{{User: "repl", Password: "pw"}}}
	st := &placement.State{Upstreams: map[string]*placement.Upstream{"main": u}}
	s := New(fakeRouter{st}, 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return &session{s: s, user: "repl", ups: []*placement.Upstream{u}, vars: map[string]*string{}}
}

func TestReplicaConnectQueries(t *testing.T) {
	ss := newTestSession()
	one := func(q string) string {
		t.Helper()
		r, err := ss.query(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if r.Resultset == nil || len(r.Resultset.RowDatas) != 1 {
			t.Fatalf("%s: want one row", q)
		}
		vals, err := r.Resultset.RowDatas[0].ParseText(r.Resultset.Fields, nil)
		if err != nil {
			t.Fatal(err)
		}
		v := vals[len(vals)-1]
		if b := v.AsString(); b != nil {
			return string(b)
		}
		return v.String()
	}
	if v := one("SHOW VARIABLES LIKE 'SERVER_ID'"); v != "7" {
		t.Errorf("server_id = %q", v)
	}
	if v := one("SELECT @@GLOBAL.gtid_domain_id"); v != "3" {
		t.Errorf("gtid_domain_id = %q", v)
	}
	if _, err := ss.query("SET @master_binlog_checksum= @@global.binlog_checksum"); err != nil {
		t.Fatal(err)
	}
	if v := one("SELECT @master_binlog_checksum"); v != "CRC32" {
		t.Errorf("@master_binlog_checksum = %q", v)
	}
	if v := one("SELECT UNIX_TIMESTAMP()"); len(v) < 10 {
		t.Errorf("UNIX_TIMESTAMP() = %q", v)
	}
	if v := one("select @@version_comment limit 1"); !strings.Contains(v, "Flotilla") {
		t.Errorf("version_comment = %q", v)
	}
	for _, q := range []string{"SET NAMES utf8mb4", "SET @slave_connect_state='0-7-5'", "SET @unknown_thing = 12"} {
		if _, err := ss.query(q); err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
	if v := ss.vars["slave_connect_state"]; v == nil || *v != "0-7-5" {
		t.Errorf("slave_connect_state not recorded: %v", v)
	}
	_, err := ss.query("DROP TABLE t")
	if me, ok := err.(*mysql.MyError); !ok || me.Code != mysql.ER_NOT_SUPPORTED_YET || !strings.Contains(me.Message, "DROP TABLE t") {
		t.Errorf("an unsupported statement must be refused naming it, got %v", err)
	}
	if _, err := ss.query("SHOW SLAVE HOSTS"); err != nil {
		t.Errorf("SHOW SLAVE HOSTS: %v", err)
	}
}

func TestSharedReplicaUserIsRoutedByGTID(t *testing.T) {
	ss := newTestSession()
	other := &placement.Upstream{Name: "other", ServerID: 9, DomainID: 4, GroupID: 3}
	ss.ups = append(ss.ups, other)
	if _, err := ss.upstream(); err == nil || !strings.Contains(err.Error(), "shared by upstreams main, other") {
		t.Fatalf("without a position the shared user is ambiguous: %v", err)
	}
	for pos, want := range map[string]string{"0-9-100": "other", "3-7-5": "main", "0-7-1": "main"} {
		v := pos
		ss.vars["slave_connect_state"] = &v
		u, err := ss.upstream()
		if err != nil || u.Name != want {
			t.Errorf("position %s routed to %v (%v), want %s", pos, u, err, want)
		}
	}
}

// FuzzNetworkDecoders: everything a client sends is parsed by these; none may panic.
func FuzzNetworkDecoders(f *testing.F) {
	f.Add([]byte("SELECT \xff\xff\xff\xff AS x"))
	f.Add([]byte("SHOW VARIABLES ııı LIKE '%'"))
	f.Add([]byte("/* unterminated"))
	f.Add([]byte("@slave_connect_state='0-1-2'"))
	f.Add([]byte{4, 0, 0, 0, 0, 0, 42, 0, 0, 0, 'f'})
	f.Add([]byte("SELECT @@a, @b, UNIX_TIMESTAMP() LIMIT 1"))
	// A handshake response: caps with PROTOCOL_41|SECURE_CONNECTION|PLUGIN_AUTH, max
	// packet, charset, 23 reserved, user, auth data, plugin.
	f.Add(append(append([]byte{0x05, 0x82, 0x08, 0x00, 0, 0, 0, 1, 33}, make([]byte, 23)...), "repl\x00\x14abcdefghij0123456789mysql_native_password\x00"...))
	// The same with CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA and a truncated length.
	f.Add(append(append([]byte{0x05, 0x82, 0x28, 0x00, 0, 0, 0, 1, 33}, make([]byte, 23)...), "repl\x00\xfe"...))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseSet(string(b), sysvars)
		_, _ = parseDump(b)
		_, _ = parseDumpGTID(b)
		ss := newTestSession()
		_ = ss.registerSlave(b)
		_, _ = ss.query(string(b))
		_, _ = ss.query("SELECT " + string(b))
		_, _ = ss.query("SET " + string(b))
		_, _ = (&recordEvents{skip: uint64(len(b) / 2)}).send(b, &collect{})
		_, _ = parseHandshakeResponse(b)
	})
}
