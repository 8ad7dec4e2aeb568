package mysqlfront

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/packet"

	"github.com/flotilla-relay/flotilla/internal/binlog"
	"github.com/flotilla-relay/flotilla/placement"
)

// specSource records the dump a session asks for and describes a MySQL group.
type specSource struct{ spec *DumpSpec }

func (s specSource) Files(context.Context) (FileList, error) {
	return FileList{GTIDs: "d725c94e-606e-45cc-ade2-29bf1b217ca1:1-309", Purged: "d725c94e-606e-45cc-ade2-29bf1b217ca1:1-5", File: 3, Size: 4096}, nil
}

func (s specSource) Dump(_ context.Context, spec DumpSpec, _ EventSink) error {
	*s.spec = spec
	return errDump("recorded")
}

type specRouter struct {
	st  *placement.State
	src specSource
}

func (f specRouter) Metadata() (*placement.State, error) { return f.st, nil }
func (f specRouter) Source(context.Context, *placement.Upstream) (Source, error) {
	return f.src, nil
}

// newMySQLSession is a session of replica user repl on a MySQL-flavor upstream.
func newMySQLSession(t *testing.T, spec *DumpSpec) *session {
	u := &placement.Upstream{Name: "mysql8", Flavor: "mysql", ServerID: 10, Version: "8.0.36", GroupID: 4, BinlogChecksum: "CRC32",
		ServerUUID: "d725c94e-606e-45cc-ade2-29bf1b217ca1", ReplicaUsers: []placement.ReplicaUser{{User: "repl", Password: "pw"}}}
	st := &placement.State{Upstreams: map[string]*placement.Upstream{"mysql8": u}}
	s := New(specRouter{st: st, src: specSource{spec: spec}}, 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	client, peer := net.Pipe()
	t.Cleanup(func() { client.Close(); peer.Close() })
	go func() { _, _ = io.Copy(io.Discard, peer) }()
	return &session{s: s, user: "repl", ups: []*placement.Upstream{u}, vars: map[string]*string{}, c: &conn{Conn: packet.NewConn(client), client: client},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// dumpGTIDPacket builds a COM_BINLOG_DUMP_GTID body as MySQL replicas send it; name
// is written as given (5.7 sends NUL bytes).
func dumpGTIDPacket(flags uint16, name string, set binlog.MySQLSet) []byte {
	b := binary.LittleEndian.AppendUint16(nil, flags)
	b = binary.LittleEndian.AppendUint32(b, 7001)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = binary.LittleEndian.AppendUint64(b, 4)
	enc, _ := set.AppendEncoded(nil)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(enc)))
	return append(b, enc...)
}

// TestMySQLReplicaHandshakes replays, query by query, what MySQL 5.7, 8.0 and 8.4
// replicas (and the CDC tools' connect-time queries) send a MySQL-flavor upstream,
// from testdata/handshake/*.txt: each case is a command and its expected answer
// (rows as col=value, "ok", or "error CODE: message prefix"; "<number>" matches any
// integer). Commands: "face LISTENER" (the port the client came in by, as
// --mysql-addr takes it), "query SQL" and "dump-gtid flags=F name=N set=S" (the
// dump's spec as the source receives it).
func TestMySQLReplicaHandshakes(t *testing.T) {
	files, _ := filepath.Glob("testdata/handshake/*.txt")
	if len(files) == 0 {
		t.Fatal("no testdata")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var spec DumpSpec
			ss := newMySQLSession(t, &spec)
			for _, c := range strings.Split(strings.TrimSpace(string(data)), "\n\n") {
				lines := strings.Split(c, "\n")
				var cmd []string
				for len(lines) > 0 && lines[0] != "----" {
					if !strings.HasPrefix(lines[0], "#") {
						cmd = append(cmd, lines[0])
					}
					lines = lines[1:]
				}
				if len(cmd) == 0 {
					continue
				}
				if len(lines) == 0 {
					t.Fatalf("%s: no ---- after %q", f, cmd)
				}
				want := strings.Join(lines[1:], "\n")
				got := runHandshakeCmd(t, ss, &spec, strings.Join(cmd, " "))
				if !matchAnswer(got, want) {
					t.Errorf("%s\n  got:  %s\n  want: %s", strings.Join(cmd, " "), got, want)
				}
			}
		})
	}
}

func runHandshakeCmd(t *testing.T, ss *session, spec *DumpSpec, cmd string) string {
	t.Helper()
	verb, arg, _ := strings.Cut(cmd, " ")
	switch verb {
	case "face":
		// The port the client came in by, as --mysql-addr gives it.
		l, err := ParseListener(arg)
		if err != nil {
			t.Fatal(err)
		}
		ss.face = l
		return "ok"
	case "query":
		r, err := ss.query(arg)
		return answer(r, err)
	case "dump-gtid":
		args := map[string]string{}
		for _, kv := range strings.Fields(arg) {
			k, v, _ := strings.Cut(kv, "=")
			args[k] = v
		}
		flags, _ := strconv.ParseUint(args["flags"], 0, 16)
		set, err := binlog.ParseMySQLSet(args["set"])
		if err != nil {
			t.Fatal(err)
		}
		name := strings.ReplaceAll(args["name"], `\0`, "\x00")
		*spec = DumpSpec{}
		ss.mysqlSet = nil
		err = ss.dumpGTID(context.Background(), dumpGTIDPacket(uint16(flags), name, set))
		if spec.GroupID == 0 {
			return answer(nil, err)
		}
		return fmt.Sprintf("spec group=%d mysql_gtid=%v set=%s flags=%d heartbeat=%v checksum=%s", spec.GroupID, spec.MySQLGTIDMode, spec.MySQLSet, spec.Flags, spec.Heartbeat, spec.Checksum)
	case "dump-gtid-hex":
		var flags uint64
		var raw []byte
		for _, kv := range strings.Fields(arg) {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "flags":
				flags, _ = strconv.ParseUint(v, 0, 16)
			case "set":
				var err error
				if raw, err = hex.DecodeString(v); err != nil {
					t.Fatal(err)
				}
			}
		}
		pkt := dumpGTIDPacket(uint16(flags), "", binlog.MySQLSet{})
		pkt = append(binary.LittleEndian.AppendUint32(pkt[:len(pkt)-12], uint32(len(raw))), raw...)
		return answer(nil, ss.dumpGTID(context.Background(), pkt))
	}
	t.Fatalf("unknown command %q", cmd)
	return ""
}

func answer(r *mysql.Result, err error) string {
	if err != nil {
		var me *mysql.MyError
		if errors.As(err, &me) {
			return fmt.Sprintf("error %d: %s", me.Code, me.Message)
		}
		return "error: " + err.Error()
	}
	if r == nil || r.Resultset == nil {
		return "ok"
	}
	var rows []string
	for _, rd := range r.Resultset.RowDatas {
		vals, err := rd.ParseText(r.Resultset.Fields, nil)
		if err != nil {
			return "error: " + err.Error()
		}
		var cols []string
		for i, v := range vals {
			s := v.String()
			if v.Type == mysql.FieldValueTypeString {
				s = string(v.AsString())
			}
			if v.Type == mysql.FieldValueTypeNull {
				s = "NULL"
			}
			cols = append(cols, string(r.Resultset.Fields[i].Name)+"="+s)
		}
		rows = append(rows, strings.Join(cols, " "))
	}
	if len(rows) == 0 {
		return "empty"
	}
	return strings.Join(rows, "\n")
}

// matchAnswer compares an answer with its expectation: "<number>" stands for an
// integer, and an error expectation may give only the message's beginning.
func matchAnswer(got, want string) bool {
	if strings.HasPrefix(want, "error ") {
		return strings.HasPrefix(got, want)
	}
	if strings.Contains(want, "<number>") {
		pre, post, _ := strings.Cut(want, "<number>")
		if !strings.HasPrefix(got, pre) || !strings.HasSuffix(got, post) {
			return false
		}
		_, err := strconv.ParseInt(got[len(pre):len(got)-len(post)], 10, 64)
		return err == nil
	}
	return got == want
}

// TestSharedUserRoutedByServerUUID: a replica user two MySQL upstreams share is
// routed by the master server_uuid in the GTID set the dump sends; a set naming
// neither (or both) is refused with the reason.
func TestSharedUserRoutedByServerUUID(t *testing.T) {
	var spec DumpSpec
	ss := newMySQLSession(t, &spec)
	other := &placement.Upstream{Name: "other", Flavor: "mysql", ServerID: 11, GroupID: 9, BinlogChecksum: "CRC32",
		ServerUUID: "3e11fa47-71ca-11e1-9e33-c80aa9429562"}
	ss.ups = append(ss.ups, other)
	ss.s.router.(specRouter).st.Upstreams["other"] = other
	if got := runHandshakeCmd(t, ss, &spec, "query SET @source_binlog_checksum = 'CRC32'"); got != "ok" {
		t.Fatal(got)
	}
	for set, want := range map[string]uint64{
		"3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5":                                          9,
		"d725c94e-606e-45cc-ade2-29bf1b217ca1:1-9,00000000-0000-0000-0000-000000000001:1":   4,
		"d725c94e-606e-45cc-ade2-29bf1b217ca1:1-9,3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5": 0, // both
		"00000000-0000-0000-0000-000000000001:1-3":                                          0, // neither
	} {
		got := runHandshakeCmd(t, ss, &spec, "dump-gtid flags=0 name= set="+set)
		if want == 0 {
			if !strings.Contains(got, "is shared by upstreams mysql8, other") {
				t.Errorf("set %s: %s, want a refusal naming both upstreams", set, got)
			}
			continue
		}
		if !strings.HasPrefix(got, fmt.Sprintf("spec group=%d ", want)) {
			t.Errorf("set %s routed as %s, want group %d", set, got, want)
		}
	}
}
