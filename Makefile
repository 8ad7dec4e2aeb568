# Flotilla build and test entry points. `make test` is what CI runs.
GO       ?= go
BIN      := bin/flotilla
PKGS     := ./...

.PHONY: build test unit e2e bench fuzz proto lint demo clean tools

build:
	$(GO) build -o $(BIN) ./cmd/flotilla

# Installs MariaDB and Node.js (Debian packages) when missing, builds, runs every test (unit, fuzz
# seeds, end-to-end against real servers) and prints a summary line.
test: build
	@scripts/ensure-mariadb.sh
	@scripts/ensure-node.sh
	@FLOTILLA_BIN=$(CURDIR)/$(BIN) scripts/gotest.sh $(PKGS)

bench: build
	@scripts/ensure-mariadb.sh
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./test/bench/...

# Runs every fuzz target with -fuzz for FUZZTIME each (CI uses a short time).
FUZZTIME ?= 30s
fuzz:
	@FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

proto:
	@scripts/proto.sh

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@test -x "$$($(GO) env GOPATH)/bin/staticcheck" || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.6.1
	"$$($(GO) env GOPATH)/bin/staticcheck" $(PKGS)

demo: build
	@scripts/ensure-mariadb.sh
	$(GO) run ./test/demo -flotilla $(BIN) $(DEMO_ARGS)

clean:
	rm -rf bin .demo
