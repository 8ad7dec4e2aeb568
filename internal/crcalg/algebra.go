package crcalg

import "hash/crc32"

// Poly is a CRC-32 polynomial's algebra. Its values are computed once, by NewPoly,
// and never written after: it is safe for concurrent use.
type Poly struct {
	reflected uint32
	table     *crc32.Table
	// x2n holds x^(2^k) mod P for k = 0..63 (a shift of up to 2^64 bits), reflected:
	// advancing a register through 2^k zero bits multiplies it by x2n[k].
	x2n [64]uint32
	// x2nInv holds x^(-2^k) mod P: taking a register back through 2^k zero bits
	// (ShiftBack). x is invertible because P's constant term is one.
	x2nInv [64]uint32
}

// NewPoly returns the algebra of the polynomial whose bit-reversed form is reflected
// (crc32.IEEE, crc32.Castagnoli).
func NewPoly(reflected uint32) *Poly {
	p := &Poly{reflected: reflected, table: crc32.MakeTable(reflected)}
	p.x2n[0] = 1 << 30 // x^1
	for k := 1; k < len(p.x2n); k++ {
		p.x2n[k] = p.mulModP(p.x2n[k-1], p.x2n[k-1])
	}
	// x^-1: the value that x times gives x^0. Multiplying by x shifts right and, when
	// the coefficient of x^31 was set, adds P's low terms (reflected), which set the
	// x^0 bit; undoing that on x^0 itself (1<<31) gives the inverse.
	p.x2nInv[0] = (1<<31^reflected)<<1 | 1
	for k := 1; k < len(p.x2nInv); k++ {
		p.x2nInv[k] = p.mulModP(p.x2nInv[k-1], p.x2nInv[k-1])
	}
	return p
}

// The two polynomials Flotilla uses, computed once and never written after: read
// them through IEEE and Castagnoli.
var (
	ieee       = NewPoly(crc32.IEEE)
	castagnoli = NewPoly(crc32.Castagnoli)
)

// IEEE is the polynomial of binlog event trailers.
func IEEE() *Poly { return ieee }

// Castagnoli (CRC-32C) is the polynomial of Flotilla's own records and frames.
func Castagnoli() *Poly { return castagnoli }

// Table is the polynomial's table for hash/crc32.
func (p *Poly) Table() *crc32.Table { return p.table }

// Checksum is crc32.Checksum with the polynomial.
func (p *Poly) Checksum(b []byte) uint32 { return crc32.Checksum(b, p.table) }

// mulModP returns a*b modulo the polynomial, both in reflected form.
func (p *Poly) mulModP(a, b uint32) uint32 {
	var r uint32
	for m := uint32(1) << 31; m != 0 && a != 0; m >>= 1 {
		if a&m != 0 {
			r ^= b
			a &^= m
		}
		// b *= x
		if b&1 != 0 {
			b = b>>1 ^ p.reflected
		} else {
			b >>= 1
		}
	}
	return r
}

// ShiftZeros advances a zero-register CRC c (no initial or final inversion) through
// n zero bytes. It costs one 32-step multiplication per one in n's binary form.
func (p *Poly) ShiftZeros(c uint32, n int) uint32 { return p.shift(c, n, &p.x2n) }

// ShiftBack undoes ShiftZeros: it takes a zero-register CRC c back through n zero
// bytes, so that ShiftZeros(ShiftBack(c, n), n) == c. It costs what ShiftZeros does.
func (p *Poly) ShiftBack(c uint32, n int) uint32 { return p.shift(c, n, &p.x2nInv) }

// shift multiplies c by x^(8n) or, with the inverse powers, by x^(-8n).
func (p *Poly) shift(c uint32, n int, powers *[64]uint32) uint32 {
	bits := uint64(n) * 8
	for k := 0; bits != 0 && c != 0; k++ {
		if bits&1 != 0 {
			c = p.mulModP(powers[k], c)
		}
		bits >>= 1
	}
	return c
}

// Combine returns the checksum of a||b (as crc32.Checksum takes it) from crcA, the
// checksum of a, and crcB, the checksum of b, which is lenB bytes long. (The
// inversions hash/crc32 applies cancel: a's register, advanced through b, is all
// that b's checksum lacks.)
func (p *Poly) Combine(crcA, crcB uint32, lenB int) uint32 {
	return p.ShiftZeros(crcA, lenB) ^ crcB
}

// Part returns the checksum of whole[off:off+n] from crcWhole, the checksum of whole,
// taking only the checksums of the bytes before and after the part (and two
// shifts): a part that is most of a large slice whose checksum is known costs a
// small fraction of a pass over it. (Combine, solved for its parts: the bytes after
// the part are removed with ShiftBack, those before with ShiftZeros.)
func (p *Poly) Part(crcWhole uint32, whole []byte, off, n int) uint32 {
	c := crcWhole
	if rest := whole[off+n:]; len(rest) > 0 {
		c = p.ShiftBack(c^p.Checksum(rest), len(rest)) // the checksum of whole[:off+n]
	}
	if off > 0 {
		c ^= p.ShiftZeros(p.Checksum(whole[:off]), n)
	}
	return c
}
