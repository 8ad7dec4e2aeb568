package mysqlfront

import (
	"errors"
	"fmt"
	"net"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/packet"
)

// conn is a client connection after the handshake: packet framing (go-mysql's packet
// layer) plus the responses the front end writes. Flotilla runs its own handshake
// (handshake.go) because authentication must learn which upstream's password
// matched, which a generic server cannot tell.
type conn struct {
	*packet.Conn
	// client is the connection under the packet layer (TLS once upgraded); the dump
	// reads it directly to notice a replica going away.
	client     net.Conn
	rd         *packetReader
	capability uint32 // the client's capabilities, masked by the server's
	tls        bool
}

// ReadPacket reads the client's next packet through the bounded reader; it shadows
// go-mysql's, which would allocate whatever length a header announces.
func (c *conn) ReadPacket() ([]byte, error) { return c.rd.readPacket(&c.Sequence) }

// writeValue answers a command: nil is OK, an error an error packet, a result with
// a resultset the resultset, else OK with the result's counts.
func (c *conn) writeValue(v any) error {
	switch v := v.(type) {
	case nil:
		return c.writeOK(nil)
	case error:
		return c.writeError(v)
	case *mysql.Result:
		if v != nil && v.Resultset != nil {
			return c.writeResultset(v.Resultset)
		}
		return c.writeOK(v)
	}
	return fmt.Errorf("mysql front end: cannot answer with a %T", v)
}

func (c *conn) writeOK(r *mysql.Result) error {
	data := make([]byte, 4, 16)
	data = append(data, mysql.OK_HEADER)
	var affected, insertID uint64
	var status uint16 = mysql.SERVER_STATUS_AUTOCOMMIT
	if r != nil {
		affected, insertID, status = r.AffectedRows, r.InsertId, status|r.Status
	}
	data = append(data, mysql.PutLengthEncodedInt(affected)...)
	data = append(data, mysql.PutLengthEncodedInt(insertID)...)
	data = append(data, byte(status), byte(status>>8), 0, 0)
	return c.WritePacket(data)
}

// writeError sends err with its MySQL code when it carries one (*mysql.MyError
// anywhere in its chain), else as ER_UNKNOWN_ERROR with its text.
func (c *conn) writeError(err error) error {
	var m *mysql.MyError
	if !errors.As(err, &m) {
		m = mysql.NewError(mysql.ER_UNKNOWN_ERROR, err.Error())
	}
	data := make([]byte, 4, 13+len(m.Message))
	data = append(data, mysql.ERR_HEADER, byte(m.Code), byte(m.Code>>8), '#')
	state := m.State
	if len(state) != 5 {
		state = mysql.DEFAULT_MYSQL_STATE
	}
	data = append(data, state...)
	data = append(data, m.Message...)
	return c.WritePacket(data)
}

func (c *conn) writeEOF() error {
	return c.WritePacket([]byte{0, 0, 0, 0, mysql.EOF_HEADER, 0, 0, byte(mysql.SERVER_STATUS_AUTOCOMMIT), 0})
}

// writeResultset sends a text resultset: column count, column definitions, EOF, rows,
// EOF (the front end never announces CLIENT_DEPRECATE_EOF).
func (c *conn) writeResultset(r *mysql.Resultset) error {
	data := make([]byte, 4, 256)
	data = append(data, mysql.PutLengthEncodedInt(uint64(len(r.Fields)))...)
	if err := c.WritePacket(data); err != nil {
		return err
	}
	for _, f := range r.Fields {
		data = append(data[:4], f.Dump()...)
		if err := c.WritePacket(data); err != nil {
			return err
		}
	}
	if err := c.writeEOF(); err != nil {
		return err
	}
	for _, row := range r.RowDatas {
		data = append(data[:4], row...)
		if err := c.WritePacket(data); err != nil {
			return err
		}
	}
	return c.writeEOF()
}
