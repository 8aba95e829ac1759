package payment_test

import (
	"bytes"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/paylock/paylock/lock"
	"github.com/paylock/paylock/payment"
)

// commentSafe is what may appear inside /*paylock_key='...'*/: no quote, no
// star, no slash-star, no backslash, no control character.
var commentSafe = regexp.MustCompile(`^[A-Za-z0-9_.~%/-]*$`)

// FuzzPaymentKey: for any service id and line item id, Validate never
// panics and accepts exactly the documented keys; a valid key's lock key is
// valid, names it unambiguously (two different payment keys never share an
// encoding), round-trips through its string, and that string can't leave the
// SQL comment it is written into. The seed corpus is in
// testdata/fuzz/FuzzPaymentKey; run more with
// go test -run '^$' -fuzz FuzzPaymentKey ./payment/
func FuzzPaymentKey(f *testing.F) {
	f.Add(int64(7), "li_123", int64(7), "li_124")
	f.Add(int64(1), "a/b", int64(1), "a%2Fb")
	f.Add(int64(12), "3", int64(1), "23")
	f.Fuzz(func(t *testing.T, sid int64, li string, sid2 int64, li2 string) {
		k := payment.Key{ServiceID: sid, LineItemID: li}
		err := k.Validate()
		valid := sid > 0 && li != "" && len(li) <= payment.MaxLineItemIDLen && utf8.ValidString(li) && !strings.ContainsRune(li, 0)
		if valid != (err == nil) {
			t.Fatalf("Validate(%d, %q) = %v, want valid=%v", sid, li, err, valid)
		}
		if err != nil {
			if !errors.Is(err, payment.ErrInvalidKey) {
				t.Fatalf("Validate: %v does not match ErrInvalidKey", err)
			}
			return
		}
		lk := k.LockKey()
		if err := lk.Validate(); err != nil {
			t.Fatalf("the lock key of valid %v: %v", k, err)
		}
		if p := lk.Parts(); lk.Namespace() != payment.Namespace || len(p) != 2 || p[0] != strconv.FormatInt(sid, 10) || p[1] != li {
			t.Fatalf("LockKey() = %s, parts %q", lk, p)
		}
		s := lk.String()
		if !commentSafe.MatchString(s) || strings.Contains(s, "*/") {
			t.Fatalf("LockKey().String() = %q could leave its SQL comment", s)
		}
		if back, err := lock.ParseKey(s); err != nil || back != lk {
			t.Fatalf("ParseKey(%q) = %v, %v", s, back, err)
		}
		k2 := payment.Key{ServiceID: sid2, LineItemID: li2}
		if k2 != k && k2.Validate() == nil && bytes.Equal(k2.LockKey().Encode(), lk.Encode()) {
			t.Fatalf("%v and %v share the lock encoding %x", k, k2, lk.Encode())
		}
	})
}
