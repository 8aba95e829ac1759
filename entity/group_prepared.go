package entity

import (
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// preparedSQL is the set of statements group members prepared on a
// connection, by their SQL, kept in its pgconn.PgConn.CustomData: at most
// maxPrepared.
type preparedSQL struct {
	mu sync.Mutex
	// sds: nil for a statement forgotten (see forget), to deallocate
	// before it is prepared again.
	sds map[string]*pgconn.StatementDescription
	// names fn prepared statements under itself (tx.Prepare): fn runs
	// them by name, which is not SQL to prepare.
	names map[string]bool
}

// named records name as one fn prepared a statement under.
func (p *preparedSQL) named(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.names == nil {
		p.names = make(map[string]bool)
	}
	p.names[name] = true
}

func (p *preparedSQL) isNamed(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.names[name]
}

const (
	maxPrepared = 256
	preparedKey = "paylock.group.prepared"
)

func preparedOn(conn *pgx.Conn) *preparedSQL {
	data := conn.PgConn().CustomData()
	p, _ := data[preparedKey].(*preparedSQL)
	if p == nil {
		p = &preparedSQL{sds: make(map[string]*pgconn.StatementDescription)}
		data[preparedKey] = p
	}
	return p
}

func (p *preparedSQL) get(sql string) *pgconn.StatementDescription {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sds[sql]
}

func (p *preparedSQL) full() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sds) >= maxPrepared
}

func (p *preparedSQL) add(sql string, sd *pgconn.StatementDescription) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sds[sql] = sd
}

// forget drops sql after err, if err says its prepared statement is gone or
// no longer fits the table: it goes through pgx's cache from then on.
func (p *preparedSQL) forget(sql string, err error) {
	if stalePlan(err) || missingStatement(err) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if _, ok := p.sds[sql]; ok {
			p.sds[sql] = nil
		}
	}
}

// takeStale reports whether sql was forgotten, and clears that.
func (p *preparedSQL) takeStale(sql string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	sd, ok := p.sds[sql]
	if !ok || sd != nil {
		return false
	}
	delete(p.sds, sql)
	return true
}
