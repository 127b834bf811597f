# retryq — see README.md. `make test` and `make demo` are the two commands
# that must work on a fresh machine; every target installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
PY_SCRIPTS := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH := $(PY_SCRIPTS):$(HOME)/.cargo/bin:$(PATH)

# Local runs (`make watch`, `make invoke`) talk to a local SQS server and to
# destinations on loopback.
WATCH_PORT ?= 9000
EVENT ?= events/mixed-batch.json
ARCH ?= arm64
# Where cargo puts its builds (CARGO_TARGET_DIR or a config's target-dir
# included), for the targets that copy or list them.
TARGET_DIR = $(shell cargo metadata --format-version 1 --no-deps | $(PYTHON) -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

.PHONY: help tools test demo lint fmt watch invoke build destination fuzz bench sim chaos

help:
	@echo "make demo      the processor's main job, locally, end to end"
	@echo "make test      make lint, then start a local SQS server and run every test"
	@echo "make lint      cargo fmt --check, clippy -D warnings, cfn-lint and sam validate --lint, no module cycle"
	@echo "make watch     run the function under cargo lambda watch (port $(WATCH_PORT))"
	@echo "make invoke    EVENT=events/delivered.json: invoke the watched function (sent now, or EVENT_AGE_SECONDS ago)"
	@echo "make destination  a demo destination on 127.0.0.1:9100 for the sample events"
	@echo "make build     release build for Lambda ($(ARCH)), zip in target/lambda"
	@echo "make bench     benchmarks: table, bench/results.json, bench/chart.svg"
	@echo "make sim       SEED=1 SIM_SECONDS=40: the fleet simulation at 10, 100 and 1,000 processes (docs/state.md)"
	@echo "make fuzz      FUZZ_SECONDS=300: the body -> decision fuzzer, longer than the smoke in make test"
	@echo "make chaos     SEED=1 N=1000 SECONDS=600: the soak with killed and frozen workers (docs/reliability.md)"

tools:
	@scripts/tools.sh

demo: tools
	scripts/with-moto.sh scripts/demo.sh

lint: tools
	cargo fmt --all -- --check
	cargo clippy --quiet --locked --all-targets --features aws-tests,sim -- -D warnings
	cfn-lint template.yaml
	SAM_CLI_TELEMETRY=0 .tools/sam/bin/sam validate --lint --template template.yaml
	$(PYTHON) scripts/module-cycles.py
	# The producer alone: no Lambda runtime, CLI or Secrets Manager SDK.
	cargo clippy --quiet --locked --no-default-features --lib -- -D warnings
	! cargo tree --locked --no-default-features -e normal | grep -E "^.*(lambda_runtime|aws_lambda_events|clap|aws-sdk-secretsmanager) v"

fmt:
	cargo fmt --all

test: lint
	# --quiet: a dot per test and the failures in full, so a green run fits on
	# a few screens (`cargo test --features aws-tests,sim` lists every test).
	scripts/with-moto.sh cargo test --quiet --locked --features aws-tests,sim

# The deterministic fleet simulation: a Markdown table of its figures;
# fails if an invariant broke.
SEED ?= 1
SIM_SECONDS ?= 40
sim:
	cargo run --locked --release --features sim --bin retryq-sim -- --seed $(SEED) --seconds $(SIM_SECONDS) 10 100 1000

# The soak (docs/reliability.md): N messages, WORKERS `retryq worker`s,
# workers killed and frozen for at most SECONDS (TABLE=true: with the
# fleet's state table and a fleet rate limit); prints the account's row and
# fails if the promise broke. `make test` runs a short seed of it.
N ?= 1000
SECONDS ?= 600
WORKERS ?= 3
TABLE ?= false
chaos: tools
	RETRYQ_CHAOS_SEED=$(SEED) RETRYQ_CHAOS_N=$(N) RETRYQ_CHAOS_SECONDS=$(SECONDS) RETRYQ_CHAOS_WORKERS=$(WORKERS) RETRYQ_CHAOS_TABLE=$(TABLE) \
	  scripts/with-moto.sh cargo test --locked --features aws-tests,sim --test aws -- chaos --nocapture

# The function under `cargo lambda watch`, with a local SQS server on
# 127.0.0.1:$(SQS_PORT) holding the queues the sample events name.
SQS_PORT ?= 5000
watch: tools
	MOTO_PORT=$(SQS_PORT) QUEUES="retryq-events retryq-events-dlq" scripts/with-moto.sh \
	  env DLQ_URL=http://127.0.0.1:$(SQS_PORT)/123456789012/retryq-events-dlq \
	      ALLOW_PRIVATE_DESTINATIONS=$${ALLOW_PRIVATE_DESTINATIONS:-true} \
	  cargo lambda watch --invoke-port $(WATCH_PORT)

# The sample events carry fixed timestamps: they are sent as if their messages
# had been sent EVENT_AGE_SECONDS ago (default now), so that the retention rule
# treats them as it would a real message of that age (docs/operations.md).
EVENT_AGE_SECONDS ?= 0
invoke: tools
	event=$$($(PYTHON) scripts/fresh-event.py --age-seconds $(EVENT_AGE_SECONDS) $(EVENT)) && \
	  cargo lambda invoke retryq-processor --invoke-port $(WATCH_PORT) --data-ascii "$$event"

# Benchmarks (not part of make test): see benches/retryq.rs and README's
# Performance section. Release builds; a few minutes on 2 cores.
bench: tools
	# The bootstrap alone, as `make build` makes it, kept for its size: the
	# bench's own build of the binaries takes the dev-dependencies' features.
	cargo build --release --bin retryq-processor
	cp "$(TARGET_DIR)/release/retryq-processor" "$(TARGET_DIR)/release/retryq-processor.deployed"
	cargo build --release --example demo_destination --example floor
	scripts/with-moto.sh cargo bench --bench retryq
	# The console on 10,000 dead letters, beside `retryq dlq list`.
	cargo build --release --features console --bin retryq
	scripts/with-moto.sh cargo bench --features console --bench console

# The mutation fuzzer of tests/it/fuzz.rs, for longer than make test's smoke run.
FUZZ_SECONDS ?= 300
fuzz:
	RETRYQ_FUZZ_SECONDS=$(FUZZ_SECONDS) cargo test --release --test it fuzz -- --nocapture

destination:
	cargo run --example demo_destination

build:
	WITH_ZIG=$(if $(filter arm64,$(ARCH)),1,0) scripts/tools.sh
	cargo lambda build --release --$(ARCH) --output-format zip
	@ls -l "$(TARGET_DIR)/lambda/retryq-processor/"
