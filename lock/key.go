package lock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/cespare/xxhash/v2"
)

// ErrInvalidKey is returned, wrapped with the reason, for a Key that must not
// be locked: see [Key.Validate]. No SQL runs for an invalid key.
var ErrInvalidKey = errors.New("lock: invalid key")

// Limits on a Key, enforced by Validate.
const (
	// MaxNamespaceLen is the longest namespace, in bytes.
	MaxNamespaceLen = 63
	// MaxKeyLen bounds the sum of the parts' lengths, in bytes.
	MaxKeyLen = 4096
)

// Key names one lockable entity: a namespace for the entity kind ("payments")
// and the parts of its logical key ("7", "li_123"). Its lock id is fixed when
// the Key is made. The zero Key is invalid. Keys are comparable values, safe
// for concurrent use.
type Key struct {
	ns    string
	parts string // the length-prefixed encoding of the parts
	n     int    // number of parts
	id    int64
}

// NewKey returns the Key for the entity kind namespace and its logical key
// parts. It never fails: an invalid key is refused, before any SQL runs, by
// Validate and by every function that takes a Key.
func NewKey(namespace string, parts ...string) Key {
	var enc []byte
	for _, p := range parts {
		enc = binary.AppendUvarint(enc, uint64(len(p)))
		enc = append(enc, p...)
	}
	k := Key{ns: namespace, parts: string(enc), n: len(parts)}
	k.id = int64(xxhash.Sum64(k.Encode()))
	return k
}

// Encode returns the byte string the lock id is hashed from: each of the
// namespace and the parts as a uvarint length followed by its bytes. This is a
// wire format shared by every process and version; it never changes.
func (k Key) Encode() []byte {
	b := binary.AppendUvarint(make([]byte, 0, 1+len(k.ns)+len(k.parts)), uint64(len(k.ns)))
	b = append(b, k.ns...)
	return append(b, k.parts...)
}

// ID returns the advisory-lock id passed to PostgreSQL: the xxhash64 of
// Encode, as a signed bigint.
func (k Key) ID() int64 { return k.id }

// ClassID and ObjID return the two halves of ID as pg_locks shows them
// (with objsubid = 1) for a lock taken with a single bigint.
func (k Key) ClassID() uint32 { return uint32(uint64(k.id) >> 32) }

// ObjID returns the low 32 bits of ID; see [Key.ClassID].
func (k Key) ObjID() uint32 { return uint32(k.id) }

// Namespace returns the entity kind the Key was made with.
func (k Key) Namespace() string { return k.ns }

// Parts returns a copy of the logical key parts the Key was made with.
func (k Key) Parts() []string {
	parts := make([]string, 0, k.n)
	for rest := k.parts; rest != ""; {
		n, w := binary.Uvarint([]byte(rest[:min(len(rest), binary.MaxVarintLen64)]))
		parts = append(parts, rest[w:w+int(n)])
		rest = rest[w+int(n):]
	}
	return parts
}

// String returns the key as "namespace/part/part", each element escaped so
// that only [A-Za-z0-9_.~-] and %XX appear. It is what the lock statements
// carry in their SQL comment and what ParseKey reads back.
func (k Key) String() string {
	var b strings.Builder
	b.WriteString(escape(k.ns))
	for _, p := range k.Parts() {
		b.WriteByte('/')
		b.WriteString(escape(p))
	}
	return b.String()
}

// ParseKey is the inverse of Key.String.
func ParseKey(s string) (Key, error) {
	elems := strings.Split(s, "/")
	for i, e := range elems {
		u, err := unescape(e)
		if err != nil {
			return Key{}, fmt.Errorf("%w: parse %q: %v", ErrInvalidKey, s, err)
		}
		elems[i] = u
	}
	k := NewKey(elems[0], elems[1:]...)
	return k, k.Validate()
}

// Validate reports, wrapping ErrInvalidKey, why k must not be locked: an empty
// namespace, one longer than MaxNamespaceLen or outside [a-z0-9_.-], parts
// longer than MaxKeyLen in all, or a part that is not valid UTF-8 or holds a
// NUL byte (parts are text, as PostgreSQL stores it).
func (k Key) Validate() error {
	switch {
	case k.ns == "":
		return fmt.Errorf("%w: empty namespace", ErrInvalidKey)
	case len(k.ns) > MaxNamespaceLen:
		return fmt.Errorf("%w: namespace longer than %d bytes", ErrInvalidKey, MaxNamespaceLen)
	case strings.IndexFunc(k.ns, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-')
	}) >= 0:
		return fmt.Errorf("%w: namespace %q: only a-z, 0-9, '_', '.' and '-' are allowed", ErrInvalidKey, k.ns)
	case len(k.parts) > MaxKeyLen+k.n*binary.MaxVarintLen64:
		return fmt.Errorf("%w: key parts longer than %d bytes", ErrInvalidKey, MaxKeyLen)
	}
	total := 0
	for i, p := range k.Parts() {
		total += len(p)
		if !utf8.ValidString(p) {
			return fmt.Errorf("%w: part %d is not valid UTF-8", ErrInvalidKey, i)
		}
		if strings.IndexByte(p, 0) >= 0 {
			return fmt.Errorf("%w: part %d holds a NUL byte", ErrInvalidKey, i)
		}
	}
	if total > MaxKeyLen {
		return fmt.Errorf("%w: key parts longer than %d bytes", ErrInvalidKey, MaxKeyLen)
	}
	return nil
}

const hexDigits = "0123456789ABCDEF"

func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '~' || c == '-' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

func unescape(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", errors.New("truncated escape")
		}
		hi, lo := strings.IndexByte(hexDigits, s[i+1]), strings.IndexByte(hexDigits, s[i+2])
		if hi < 0 || lo < 0 {
			return "", fmt.Errorf("bad escape %q", s[i:i+3])
		}
		b.WriteByte(byte(hi<<4 | lo))
		i += 2
	}
	return b.String(), nil
}
