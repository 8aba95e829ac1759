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

bench: ## Go benchmarks: With beside rowlock, hot-key queue and storm (test server, fsync off)
	$(GO) test -run '^$$' -bench . -benchtime 2s -timeout 30m ./...

bench-smoke: ## every benchmark once, so they can't rot (about 20 s)
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 5m ./...

.PHONY: help test vet fmt-check bench bench-smoke
