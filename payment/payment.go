package payment

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/paylock/paylock/lock"
)

// Namespace is the lock namespace of payment keys.
const Namespace = "payments"

// MaxLineItemIDLen is the longest line_item_id, in bytes; the schema checks it
// too.
const MaxLineItemIDLen = 255

// Key is a payment's logical key: its line item id, unique within its service.
type Key struct {
	ServiceID  int64
	LineItemID string
}

// Validate reports, wrapping ErrInvalidKey, why k can't name a payment:
// ServiceID <= 0, an empty LineItemID, one longer than MaxLineItemIDLen
// bytes, not valid UTF-8, or holding a NUL byte.
func (k Key) Validate() error {
	switch {
	case k.ServiceID <= 0:
		return fmt.Errorf("%w: service_id %d must be positive", ErrInvalidKey, k.ServiceID)
	case k.LineItemID == "":
		return fmt.Errorf("%w: empty line_item_id", ErrInvalidKey)
	case len(k.LineItemID) > MaxLineItemIDLen:
		return fmt.Errorf("%w: line_item_id is %d bytes, longer than %d", ErrInvalidKey, len(k.LineItemID), MaxLineItemIDLen)
	case !utf8.ValidString(k.LineItemID):
		return fmt.Errorf("%w: line_item_id is not valid UTF-8", ErrInvalidKey)
	case strings.IndexByte(k.LineItemID, 0) >= 0:
		return fmt.Errorf("%w: line_item_id holds a NUL byte", ErrInvalidKey)
	}
	return nil
}

// LockKey returns the advisory-lock key With takes for k:
// lock.NewKey("payments", "<service_id>", "<line_item_id>").
func (k Key) LockKey() lock.Key {
	return lock.NewKey(Namespace, strconv.FormatInt(k.ServiceID, 10), k.LineItemID)
}

// String returns k as "service_id/line_item_id" (unescaped).
func (k Key) String() string { return strconv.FormatInt(k.ServiceID, 10) + "/" + k.LineItemID }

// Payment is one row of the payments table.
//
// In With, fn may change AmountCents, Currency, Status and Data; With writes
// them back if they changed. ID, ServiceID, LineItemID and CreatedAt must not
// change; UpdatedAt is set by the server.
type Payment struct {
	ID          int64
	ServiceID   int64
	LineItemID  string
	AmountCents int64
	Currency    string
	Status      string
	Data        json.RawMessage // the raw external payload; nil is SQL NULL
	CreatedAt   time.Time
	UpdatedAt   time.Time

	created bool
}

// IsNew reports whether the With call that handed p to fn created its row.
// Exactly one caller sees true for each payment, and only if its
// transaction commits does the row exist for the others.
func (p *Payment) IsNew() bool { return p.created }

// Key returns p's logical key.
func (p *Payment) Key() Key { return Key{ServiceID: p.ServiceID, LineItemID: p.LineItemID} }

// validate checks what fn left in p against before, the row as read.
func (p *Payment) validate(before *Payment) error {
	if p.ID != before.ID || p.ServiceID != before.ServiceID || p.LineItemID != before.LineItemID ||
		!p.CreatedAt.Equal(before.CreatedAt) {
		return fmt.Errorf("%w: payment %d (%s) became id %d (%d/%s)", ErrKeyChanged,
			before.ID, before.Key(), p.ID, p.ServiceID, p.LineItemID)
	}
	for name, s := range map[string]string{"currency": p.Currency, "status": p.Status} {
		if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
			return fmt.Errorf("%w: %s is not valid UTF-8 text", ErrInvalidPayment, name)
		}
	}
	if p.Data != nil && !json.Valid(p.Data) {
		return fmt.Errorf("%w: data is not valid JSON", ErrInvalidPayment)
	}
	return nil
}

// changed reports whether fn changed a column With writes.
func (p *Payment) changed(before *Payment) bool {
	return p.AmountCents != before.AmountCents || p.Currency != before.Currency || p.Status != before.Status ||
		(p.Data == nil) != (before.Data == nil) || string(p.Data) != string(before.Data)
}
