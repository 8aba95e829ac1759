package pgtest

import "sync"

var atEnd struct {
	sync.Mutex
	fns []func() error
}

// AtEnd registers f to run once the test binary's tests have ended, before
// Main stops the server: for a resource the tests share that outlives any
// one test (internal/testing/citustest's cluster). Its error is printed. It
// is safe for concurrent use.
func AtEnd(f func() error) {
	atEnd.Lock()
	defer atEnd.Unlock()
	atEnd.fns = append(atEnd.fns, f)
}

// runAtEnd runs what AtEnd registered, the last first.
func runAtEnd() []error {
	atEnd.Lock()
	fns := atEnd.fns
	atEnd.fns = nil
	atEnd.Unlock()
	var errs []error
	for i := len(fns) - 1; i >= 0; i-- {
		if err := fns[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}
