package mysqlfront

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// preAuthMaxPacket bounds every packet a client sends before it has logged in. A
// handshake response (user name, scramble, plugin name, connection attributes), an
// auth switch response and an RSA-encrypted password all fit easily; what does not
// is an attacker's announced 16 MiB.
const preAuthMaxPacket = 16 << 10

// readChunk is the most a read grows a packet's buffer by ahead of the bytes that
// have arrived.
const readChunk = 4 << 10

// errPacketTooLarge is what the packet reader returns for a packet over its limit.
var errPacketTooLarge = errors.New("client packet larger than allowed")

// packetReader reads a client's MySQL packets.
//
// Invariants: memory held for a packet grows only with the bytes the client has
// actually sent (never from the announced length alone), and a packet whose length
// header, summed over its 16 MiB continuations, exceeds max is refused as soon as
// that header is read. go-mysql's reader sizes its buffer from the 4-byte header,
// which before login let anyone with a socket take 16 MiB per connection.
type packetReader struct {
	r   io.Reader
	max int64
	// preAuth: the client has not logged in (max is preAuthMaxPacket).
	preAuth bool
	// over records the refused packet for the error the client is sent: its
	// sequence id and announced size.
	over     bool
	overSeq  byte
	overBody int64
}

// readPacket reads one logical packet (following 0xffffff continuations), checking
// and advancing the sequence id *seq that the connection's writer shares.
func (p *packetReader) readPacket(seq *uint8) ([]byte, error) {
	if p.over {
		return nil, errPacketTooLarge
	}
	var buf bytes.Buffer
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(p.r, hdr[:]); err != nil {
			return nil, fmt.Errorf("read packet header: %w", err)
		}
		size := int64(hdr[0]) | int64(hdr[1])<<8 | int64(hdr[2])<<16
		if int64(buf.Len())+size > p.max {
			p.over, p.overSeq, p.overBody = true, hdr[3], size
			return nil, errPacketTooLarge
		}
		if hdr[3] != *seq {
			return nil, fmt.Errorf("packet out of order: sequence %d, expected %d", hdr[3], *seq)
		}
		*seq++
		for left := size; left > 0; {
			step := min(left, readChunk)
			buf.Grow(int(step))
			n, err := io.CopyN(&buf, p.r, step)
			left -= n
			if err != nil {
				return nil, fmt.Errorf("read packet body (%d of %d bytes missing): %w", left, size, err)
			}
		}
		if size < 0xffffff {
			return buf.Bytes(), nil
		}
	}
}
