# Sluice: common targets. Everything here needs only Go.
GO        ?= go
BIN       := bin/sluice
PKGS      := ./...
FUZZTIME  ?= 60s
BENCHTIME ?= 1x

.PHONY: build run test race fuzz bench lint clean

build:
	$(GO) build -o $(BIN) ./cmd/sluice

run: build
	./$(BIN) serve $(if $(CONFIG),--config $(CONFIG),)

# The test suite README.md names: unit, crash, model and corruption tests.
test:
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 10m $(PKGS)

race:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

# Long fuzzing runs, one target after another.
fuzz:
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzFrameDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./engine -run '^$$' -fuzz '^FuzzEntryDecode$$' -fuzztime $(FUZZTIME)
	SLUICE_MODEL_SEEDS=2000 $(GO) test ./engine -run 'TestModel' -count=1 -timeout 60m

bench:
	$(GO) test ./engine -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 60m | tee bench/engine.txt

lint:
	@test -z "$$(gofmt -l .)" || (gofmt -l . && exit 1)
	$(GO) vet $(PKGS)

clean:
	rm -rf bin data
