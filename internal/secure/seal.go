package secure

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// sealedPrefix marks a sealed value (and its format version).
const sealedPrefix = "sealed:v1:"

// Sealer encrypts the secrets Flotilla must keep in replicated metadata (upstream
// passwords) with a key derived from the cluster secret, which lives in each node's
// cluster.json and never in a raft log or snapshot: a copy of the metadata alone does
// not reveal them.
type Sealer struct{ aead cipher.AEAD }

// NewSealer derives the metadata key from the cluster secret.
func NewSealer(clusterSecret []byte) (Sealer, error) {
	if len(clusterSecret) < 16 {
		return Sealer{}, errors.New("cluster secret too short to derive a key from")
	}
	h := sha256.New()
	h.Write([]byte("flotilla metadata secrets v1\x00"))
	h.Write(clusterSecret)
	block, err := aes.NewCipher(h.Sum(nil))
	if err != nil {
		return Sealer{}, fmt.Errorf("metadata key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return Sealer{}, fmt.Errorf("metadata key: %w", err)
	}
	return Sealer{aead: aead}, nil
}

// Seal encrypts plaintext; what names it (the upstream) is authenticated with it, so a
// sealed password cannot be moved to another upstream's record.
func (s Sealer) Seal(plaintext, name string) (string, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("seal: %w", err)
	}
	out := s.aead.Seal(nonce, nonce, []byte(plaintext), []byte(name))
	return sealedPrefix + base64.RawStdEncoding.EncodeToString(out), nil
}

// IsSealed tells a sealed value from cleartext written before sealing.
func IsSealed(v string) bool { return strings.HasPrefix(v, sealedPrefix) }

// Open decrypts a value sealed for name.
func (s Sealer) Open(sealed, name string) (string, error) {
	b64, ok := strings.CutPrefix(sealed, sealedPrefix)
	if !ok {
		return "", errors.New("not a sealed value")
	}
	b, err := base64.RawStdEncoding.DecodeString(b64)
	if err != nil || len(b) < s.aead.NonceSize() {
		return "", errors.New("sealed value is malformed")
	}
	n := s.aead.NonceSize()
	pt, err := s.aead.Open(nil, b[:n], b[n:], []byte(name))
	if err != nil {
		return "", errors.New("sealed value does not open with this cluster's key (metadata from another cluster, or cluster.json replaced?)")
	}
	return string(pt), nil
}
