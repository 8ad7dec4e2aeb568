// Package mysqlauth holds the password hashes Flotilla keeps for replica users and the
// checks of what a MySQL client sends against them.
//
// Invariants: Flotilla never stores a replica user's password, only the hash its
// authentication plugin needs (MySQL keeps the same ones); every comparison of secret
// material is constant-time.
package mysqlauth

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"hash"
)

// Authentication plugins Flotilla's front end speaks.
const (
	// Native is mysql_native_password: every MariaDB and MySQL client has it.
	Native = "mysql_native_password"
	// CachingSHA2 is caching_sha2_password, MySQL 8's default.
	CachingSHA2 = "caching_sha2_password"
)

// Hash is the stored form of a password for a plugin: SHA1(SHA1(pw)) for Native (what
// MySQL keeps in authentication_string), SHA256(SHA256(pw)) for CachingSHA2 (what
// MySQL keeps in its in-memory cache). Neither lets its holder log in: the client must
// prove it knows the inner hash.
func Hash(plugin, password string) (string, error) {
	switch plugin {
	case Native:
		a := sha1.Sum([]byte(password))
		b := sha1.Sum(a[:])
		return hex.EncodeToString(b[:]), nil
	case CachingSHA2:
		a := sha256.Sum256([]byte(password))
		b := sha256.Sum256(a[:])
		return hex.EncodeToString(b[:]), nil
	}
	return "", fmt.Errorf("authentication plugin %q is not supported: use %s or %s", plugin, Native, CachingSHA2)
}

// CheckScramble reports whether a client's scrambled answer to the nonce proves it
// knows the password stored as hash (hex, from Hash).
//
// Native: scramble = SHA1(pw) XOR SHA1(nonce || SHA1(SHA1(pw))).
// CachingSHA2 fast path: scramble = SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) || nonce).
func CheckScramble(plugin, hash string, nonce, scramble []byte) bool {
	stored, err := hex.DecodeString(hash)
	if err != nil {
		return false
	}
	switch plugin {
	case Native:
		return proves(sha1.New, stored, scramble, nonce, stored)
	case CachingSHA2:
		return proves(sha256.New, stored, scramble, stored, nonce)
	}
	return false
}

// proves reports whether scramble XOR H(a || b) is a value whose hash is stored: the
// inner hash of the password, which only a client knowing the password has.
func proves(newHash func() hash.Hash, stored, scramble, a, b []byte) bool {
	h := newHash()
	if len(stored) != h.Size() || len(scramble) != h.Size() {
		return false
	}
	h.Write(a)
	h.Write(b)
	inner := xor(h.Sum(nil), scramble)
	h.Reset()
	h.Write(inner)
	return subtle.ConstantTimeCompare(h.Sum(nil), stored) == 1
}

// CheckClear reports whether a cleartext password (caching_sha2_password's full
// authentication, over TLS or RSA-encrypted) is the one stored as hash.
func CheckClear(plugin, hash, password string) bool {
	want, err := Hash(plugin, password)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(want), []byte(hash)) == 1
}

// Scramble computes what a client that knows password answers to nonce; the front
// end's tests log in with it.
func Scramble(plugin, password string, nonce []byte) []byte {
	switch plugin {
	case Native:
		a := sha1.Sum([]byte(password))
		b := sha1.Sum(a[:])
		h := sha1.New()
		h.Write(nonce)
		h.Write(b[:])
		return xor(h.Sum(nil), a[:])
	case CachingSHA2:
		a := sha256.Sum256([]byte(password))
		b := sha256.Sum256(a[:])
		h := sha256.New()
		h.Write(b[:])
		h.Write(nonce)
		return xor(h.Sum(nil), a[:])
	}
	return nil
}

func xor(a, b []byte) []byte {
	out := make([]byte, len(a))
	for i := range a {
		out[i] = a[i] ^ b[i]
	}
	return out
}

// MaxUserName is the longest user name Flotilla accepts, in characters, as MySQL:
// replica users are declared within it, and a login naming a longer one is refused
// before the name reaches a log line or a reply.
const MaxUserName = 32
