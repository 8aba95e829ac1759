# paylock — run `make` for the list of targets.
GO ?= go

.DEFAULT_GOAL := help

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

test: vet fmt-check ## go vet, gofmt check, then the whole suite with the race detector
	$(GO) test -race -count=1 -timeout 20m ./...

vet: ## go vet
	$(GO) vet ./...

fmt-check: ## fail if gofmt would change a file
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

soak: ## the fault tests, 20 rounds of the restart and lock_timeout faults, plus 2 minutes of fuzzing
	$(GO) test -race -count=1 -timeout 30m -v -run . ./internal/faulttest/ -faulttest.rounds=20 | grep -E 'FIGURE|^(---|ok|FAIL)'
	$(GO) test -run '^$$' -fuzz FuzzPaymentKey -fuzztime 1m ./payment/
	$(GO) test -run '^$$' -fuzz FuzzKey -fuzztime 1m ./lock/

faults: ## the fault tests once, with their figures (docs/RELIABILITY.md)
	$(GO) test -race -count=1 -v ./internal/faulttest/ | grep -E 'FIGURE|^(---|ok|FAIL)'

.PHONY: help test vet fmt-check soak faults
