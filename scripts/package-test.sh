#!/usr/bin/env bash
# Builds the Debian package (scripts/package.sh), installs it on this machine with
# `dpkg -i`, checks what it installed (binary, unit, conffile, system user, state
# directory), starts the installed binary as the service user with the installed config
# and the unit's snapshot path, checks a restart comes back warm, then purges the
# package and checks nothing is left. Needs root (or passwordless sudo); refuses to run
# where a cache-manager package is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif sudo -n true 2>/dev/null; then
    as_root=(sudo)
else
    echo "scripts/package-test.sh: installing a package needs root or passwordless sudo" >&2
    exit 1
fi
if dpkg-query -W -f='${Status}' cache-manager 2>/dev/null | grep -q "install ok"; then
    echo "scripts/package-test.sh: a cache-manager package is already installed here; not touching it" >&2
    exit 1
fi

fail() { echo "scripts/package-test.sh: FAILED: $*" >&2; exit 1; }
check() { local what="$1"; shift; "$@" >/dev/null 2>&1 || fail "$what"; echo "ok: $what"; }

scripts/package.sh
deb=$(ls target/debian/cache-manager_*.deb | head -n1)
installed=0
purge() { if [ "$installed" = 1 ]; then "${as_root[@]}" dpkg --purge cache-manager >/dev/null 2>&1 || true; fi; }
trap 'purge; cleanup' EXIT

echo "--- dpkg -i $deb"
"${as_root[@]}" dpkg -i "$deb"
installed=1
check "the package is installed" sh -c "dpkg-query -W -f='\${Status}' cache-manager | grep -q 'install ok installed'"
check "the binary runs" /usr/bin/cache-manager --version
check "the unit is installed" test -f /usr/lib/systemd/system/cache-manager.service
check "the config is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' cache-manager | grep -q ' /etc/cache-manager/cache-manager.toml '"
check "the installed config is the example" cmp /etc/cache-manager/cache-manager.toml cache-manager.example.toml
check "the system user exists" getent passwd cache-manager
check "the state directory belongs to it" sh -c "[ \"\$(stat -c %U /var/lib/cache-manager)\" = cache-manager ]"
if command -v systemd-analyze >/dev/null 2>&1; then
    # Warnings about this machine (no running systemd) are not the unit's; errors are.
    "${as_root[@]}" systemd-analyze verify /usr/lib/systemd/system/cache-manager.service 2>&1 \
        | grep -v -e "System has not been booted" -e "Failed to connect" || true
fi

# The unit's own settings, read from the installed unit.
unit=/usr/lib/systemd/system/cache-manager.service
snapshot=$(sed -n 's/^Environment=CACHE_SNAPSHOT_PATH=//p' "$unit")
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
[ -n "$snapshot" ] && [ -n "$exec_start" ] || fail "the unit sets ExecStart and CACHE_SNAPSHOT_PATH"
port=$(free_port)
start_installed() {
    "${as_root[@]}" runuser -u cache-manager -- env CACHE_LISTEN="127.0.0.1:$port" \
        CACHE_SNAPSHOT_PATH="$snapshot" RUST_LOG=info $exec_start >>"$work/service.log" 2>&1 &
    service=$!
    wait_port "$port"
}
stop_installed() {
    "${as_root[@]}" pkill -TERM -u cache-manager -f /usr/bin/cache-manager
    wait "$service" || fail "the service exits 0 on SIGTERM (log: $(cat "$work/service.log"))"
}

echo "--- the installed binary, with the installed config, as cache-manager"
start_installed
check "a PUT is stored" curl -sf -X PUT "http://127.0.0.1:$port/api/cache/packaged" \
    -H 'Content-Type: application/json' -d '{"value": "from the package", "ttl": 600}'
stop_installed
check "the snapshot is written where the unit says" test -s "$snapshot"
check "it belongs to the service user" sh -c "[ \"\$(stat -c %U '$snapshot')\" = cache-manager ]"
start_installed
answer=$(curl -sf "http://127.0.0.1:$port/api/cache/packaged")
echo "$answer" | grep -q '"value":"from the package"' || fail "a restart is warm: $answer"
echo "$answer" | grep -q '"source":"l1"' || fail "the value comes from L1: $answer"
echo "ok: a restart is warm"
stop_installed

echo "--- dpkg --purge cache-manager"
"${as_root[@]}" dpkg --purge cache-manager
installed=0
check "the package is gone" sh -c "! dpkg-query -W -f='\${Status}' cache-manager 2>/dev/null | grep -q 'install ok'"
check "the binary is gone" test ! -e /usr/bin/cache-manager
check "the unit is gone" test ! -e /usr/lib/systemd/system/cache-manager.service
check "the config is gone" test ! -e /etc/cache-manager
check "the state directory is gone" test ! -e /var/lib/cache-manager
check "the user is gone" sh -c "! getent passwd cache-manager"
check "no unit symlink is left" sh -c "! ls /etc/systemd/system/*/cache-manager.service"
echo "scripts/package-test.sh: the package installs, runs warm and purges cleanly"
