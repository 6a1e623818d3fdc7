# ferry: the README's two commands are `make demo` and `make check`.
# Each installs the Debian packages it needs (when run as root), configures and builds.

DEBS := gcc meson ninja-build pkg-config libxxhash-dev libjson-c-dev libsodium-dev libzstd-dev libnftables-dev redis-server nginx-light python3 sqlite3 bash iproute2 util-linux
BUILD := build
ASAN := build-asan

.PHONY: all deps build asan demo check bench clean format tidy

all: build

deps:
	@missing=""; for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "missing Debian packages (run as root to install):$$missing"; exit 1; fi; \
	fi

$(BUILD)/build.ninja: | deps
	meson setup $(BUILD)

$(ASAN)/build.ninja: | deps
	meson setup $(ASAN) -Db_sanitize=address,undefined -Db_lundef=false

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

asan: deps $(ASAN)/build.ninja
	ninja -C $(ASAN)

demo: build
	./tests/demo.sh $(BUILD)

check: build asan
	python3 tests/run.py --build $(BUILD) --build $(ASAN)

bench: build
	./bench/run.sh $(BUILD)
	./bench/incr.sh $(BUILD)
	./bench/migrate.sh $(BUILD)
	./bench/redis.py $(BUILD)
	./bench/tree.py $(BUILD)
	./bench/sessions.py $(BUILD)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

tidy: build
	clang-tidy -p $(BUILD) --quiet --extra-arg=-Wno-unknown-warning-option $$(git ls-files 'src/*.c')

clean:
	rm -rf $(BUILD) $(ASAN)
