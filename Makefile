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

demo: ## the race and the cure side by side (starts a throwaway PostgreSQL unless DATABASE_URL is set)
	$(GO) run ./cmd/paylock demo

.PHONY: help test vet fmt-check demo
