package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// greeting10 is a protocol-10 greeting naming plugin.
func greeting10(plugin string) []byte {
	b := []byte{10}
	b = append(b, "8.0.36-fake\x00"...)
	b = binary.LittleEndian.AppendUint32(b, 7)
	b = append(b, "abcdefgh"...)
	b = append(b, 0)
	caps := uint32(mysql.CLIENT_PROTOCOL_41 | mysql.CLIENT_SECURE_CONNECTION | mysql.CLIENT_PLUGIN_AUTH | mysql.CLIENT_LONG_PASSWORD)
	b = append(b, byte(caps), byte(caps>>8), 33, 2, 0, byte(caps>>16), byte(caps>>24), 21)
	b = append(b, make([]byte, 10)...)
	b = append(b, "ijklmnopqrst\x00"...)
	return append(b, plugin+"\x00"...)
}

func writePkt(c net.Conn, seq byte, body []byte) error {
	_, err := c.Write(append([]byte{byte(len(body)), byte(len(body) >> 8), byte(len(body) >> 16), seq}, body...))
	return err
}

func readPkt(c net.Conn) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return nil, err
	}
	b := make([]byte, int(h[0])|int(h[1])<<8|int(h[2])<<16)
	_, err := io.ReadFull(c, b)
	return b, err
}

// fakeMaster greets with greetPlugin and, when switchTo is set, answers the
// handshake response with an auth switch to it. Everything the client sends after
// the greeting is delivered on the channel.
func fakeMaster(t *testing.T, greetPlugin, switchTo string) (string, <-chan []byte) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	got := make(chan []byte, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var all []byte
		defer func() { got <- all }()
		if writePkt(c, 0, greeting10(greetPlugin)) != nil {
			return
		}
		resp, err := readPkt(c)
		if err != nil {
			return
		}
		all = append(all, resp...)
		if switchTo == "" {
			_ = writePkt(c, 2, []byte{mysql.ERR_HEADER, 0x15, 0x04, '#', '2', '8', '0', '0', '0', 'n', 'o'})
			return
		}
		if writePkt(c, 2, append([]byte{mysql.EOF_HEADER}, switchTo+"\x00nonce\x00"...)) != nil {
			return
		}
		more, _ := readPkt(c)
		all = append(all, more...)
	}()
	return lis.Addr().String(), got
}

// TestMasterCannotAskForTheClearPassword: without TLS, a master (or whoever answers
// at its address) that greets with, or switches to, mysql_clear_password gets a
// refusal naming the plugin, and the password never reaches it. A native greeting
// goes on as before.
func TestMasterCannotAskForTheClearPassword(t *testing.T) {
	const secret = "s3cret-replication-password"
	for _, tc := range []struct{ greet, switchTo string }{
		{mysql.AUTH_CLEAR_PASSWORD, ""},
		{mysql.AUTH_NATIVE_PASSWORD, mysql.AUTH_CLEAR_PASSWORD},
		{mysql.AUTH_NATIVE_PASSWORD, mysql.AUTH_SHA256_PASSWORD},
	} {
		addr, got := fakeMaster(t, tc.greet, tc.switchTo)
		_, err := connectMaster(context.Background(), addr, "repl", secret, nil, 5*time.Second)
		if !errors.Is(err, errUnsafeAuth) {
			t.Fatalf("greeting %s, switch to %q: want errUnsafeAuth, got %v", tc.greet, tc.switchTo, err)
		}
		if sent := <-got; bytes.Contains(sent, []byte(secret)) {
			t.Fatalf("greeting %s, switch to %q: the password reached the server", tc.greet, tc.switchTo)
		}
	}
	addr, got := fakeMaster(t, mysql.AUTH_NATIVE_PASSWORD, "")
	_, err := connectMaster(context.Background(), addr, "repl", secret, nil, 5*time.Second)
	var me *mysql.MyError
	if !errors.As(err, &me) || me.Code != mysql.ER_ACCESS_DENIED_ERROR {
		t.Fatalf("a native greeting must reach the server's answer (1045), got %v", err)
	}
	if sent := <-got; len(sent) == 0 || bytes.Contains(sent, []byte(secret)) {
		t.Fatalf("a native login must send a scramble, never the password: %q", sent)
	}
}

// FuzzGreetingPlugin: any greeting bytes never panic the guard's parser.
func FuzzGreetingPlugin(f *testing.F) {
	f.Add(greeting10(mysql.AUTH_CLEAR_PASSWORD))
	f.Add([]byte{10, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = greetingPlugin(b)
		g := &authGuard{first: true, report: func(error) {}}
		_ = g.check(b)
		_ = g.check(b)
	})
}
