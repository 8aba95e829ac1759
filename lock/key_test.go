package lock_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/paylock/paylock/internal/testing/goldenkeys"
	"github.com/paylock/paylock/lock"
)

// The key encoding is a wire format: every process of every version, in
// every language, must derive the same id. The golden keys live in the
// repository's top-level testdata/keys.json, shared with the tests of the SQL
// function paylock_key_id and of the Ruby and Python examples. A change here
// is a deliberate, visible break.
func TestKeyGolden(t *testing.T) {
	keys := goldenkeys.Read(t)
	if len(keys) < 20 {
		t.Fatalf("testdata/keys.json holds %d keys, want at least 20", len(keys))
	}
	for _, g := range keys {
		k := lock.NewKey(g.Namespace, g.Parts...)
		if got := k.ID(); got != g.ID {
			t.Errorf("NewKey(%s).ID() = %d, want %d", g.Key, got, g.ID)
		}
		if got := k.String(); got != g.Key {
			t.Errorf("String() = %q, want %q", got, g.Key)
		}
		if p, err := lock.ParseKey(g.Key); err == nil && p != k {
			t.Errorf("ParseKey(%q) = %q, want %q", g.Key, p.Parts(), g.Parts)
		}
	}
}

func TestKeyEncodeGolden(t *testing.T) {
	got := fmt.Sprintf("%x", lock.NewKey("payments", "7", "li_123").Encode())
	// 08 "payments" 01 "7" 06 "li_123"
	if want := "087061796d656e7473013706" + "6c695f313233"; got != want {
		t.Fatalf("Encode() = %s, want %s", got, want)
	}
}

func TestKeyIsUnambiguous(t *testing.T) {
	pairs := [][2]lock.Key{
		{lock.NewKey("ns", "a|b", "c"), lock.NewKey("ns", "a", "b|c")},
		{lock.NewKey("ns", "ab"), lock.NewKey("ns", "a", "b")},
		{lock.NewKey("ns", "a"), lock.NewKey("ns", "a", "")},
		{lock.NewKey("ns"), lock.NewKey("ns", "")},
		{lock.NewKey("ns1", "x"), lock.NewKey("ns", "1x")},
		{lock.NewKey("payments", "7", "li_1"), lock.NewKey("invoices", "7", "li_1")},
		{lock.NewKey("ns", "a/b"), lock.NewKey("ns", "a", "b")},
	}
	for _, p := range pairs {
		if bytes.Equal(p[0].Encode(), p[1].Encode()) || p[0].ID() == p[1].ID() || p[0] == p[1] {
			t.Errorf("%s and %s share an encoding or id", p[0], p[1])
		}
		if p[0].String() == p[1].String() {
			t.Errorf("%q and %q share a String", p[0].Parts(), p[1].Parts())
		}
	}
	if a, b := lock.NewKey("ns", "a", "b"), lock.NewKey("ns", "a", "b"); a != b {
		t.Error("equal keys compare unequal")
	}
}

func TestParseKeyRoundTrip(t *testing.T) {
	for _, k := range []lock.Key{
		lock.NewKey("payments", "7", "li_123"),
		lock.NewKey("ns"),
		lock.NewKey("ns", ""),
		lock.NewKey("ns", "", ""),
		lock.NewKey("ns", "a/b%c", "'*/--", "ünï 😀"),
	} {
		got, err := lock.ParseKey(k.String())
		if err != nil {
			t.Fatalf("ParseKey(%q): %v", k.String(), err)
		}
		if got != k {
			t.Errorf("ParseKey(%q) = %q, want %q", k.String(), got.Parts(), k.Parts())
		}
	}
	for _, bad := range []string{"", "ns/%", "ns/%G0", "ns/%4", "NS/x"} {
		if _, err := lock.ParseKey(bad); !errors.Is(err, lock.ErrInvalidKey) {
			t.Errorf("ParseKey(%q) = %v, want ErrInvalidKey", bad, err)
		}
	}
}

func TestKeyValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		key  lock.Key
		want string // substring of the error; "" for valid
	}{
		{"valid", lock.NewKey("payments", "7", "li_1"), ""},
		{"no parts", lock.NewKey("singleton"), ""},
		{"zero", lock.Key{}, "empty namespace"},
		{"empty namespace", lock.NewKey("", "x"), "empty namespace"},
		{"upper-case namespace", lock.NewKey("Payments", "x"), "only a-z"},
		{"namespace with a comment", lock.NewKey("p*/x", "x"), "only a-z"},
		{"long namespace", lock.NewKey(strings.Repeat("n", 64), "x"), "namespace longer"},
		{"invalid UTF-8", lock.NewKey("ns", "a\xffb"), "not valid UTF-8"},
		{"NUL", lock.NewKey("ns", "a\x00b"), "NUL"},
		{"huge", lock.NewKey("ns", strings.Repeat("x", lock.MaxKeyLen+1)), "longer than"},
		{"huge in sum", lock.NewKey("ns", strings.Repeat("x", lock.MaxKeyLen), "y"), "longer than"},
		{"at the limit", lock.NewKey("ns", strings.Repeat("x", lock.MaxKeyLen)), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.key.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, lock.ErrInvalidKey) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want ErrInvalidKey with %q", err, tt.want)
			}
		})
	}
}

func TestKeyPgLocksHalves(t *testing.T) {
	k := lock.NewKey("payments", "1", "a") // negative id
	if got := int64(uint64(k.ClassID())<<32 | uint64(k.ObjID())); got != k.ID() {
		t.Fatalf("ClassID<<32|ObjID = %d, want %d", got, k.ID())
	}
}

// FuzzKey: never a panic; String and ParseKey round-trip every valid key; the
// encoding decodes back to exactly the parts (so two different keys can't
// share it); no key can leave the SQL comment it is written into.
func FuzzKey(f *testing.F) {
	f.Add("payments", "7", "li_123")
	f.Add("ns", "a|b", "c")
	f.Add("ns", "'*/ DROP TABLE payments; --", "")
	f.Add("", "\x00", "\xff")
	f.Add("ns", "😀\u202e\ufeff", "%2F")
	f.Fuzz(func(t *testing.T, ns, a, b string) {
		k := lock.NewKey(ns, a, b)
		if got := k.Parts(); len(got) != 2 || got[0] != a || got[1] != b || k.Namespace() != ns {
			t.Fatalf("Parts() = %q, want [%q %q]", got, a, b)
		}
		s := k.String()
		if strings.ContainsAny(s, "'*\\ \n") {
			t.Fatalf("String() = %q holds a character that could leave a SQL comment", s)
		}
		if k.Validate() != nil {
			return
		}
		back, err := lock.ParseKey(s)
		if err != nil || back != k {
			t.Fatalf("ParseKey(%q) = %v, %v; want the key back", s, back, err)
		}
		other := lock.NewKey(ns, a+b)
		if b != "" && bytes.Equal(other.Encode(), k.Encode()) {
			t.Fatalf("(%q,%q) and (%q) share an encoding", a, b, a+b)
		}
	})
}
