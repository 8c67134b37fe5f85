#!/bin/sh
# flobc-init-testnet [TESTNET INIT OPTION...]
#
# The docker-compose cluster's one-shot init: writes the testnet into the shared volume
# ($FLOBC_NET, default /net) with `flobc testnet init --out $FLOBC_NET/testnet OPTION...`
# unless one is already there, so `docker-compose down` followed by `up` keeps the chain
# (`down -v` removes the volumes and with them the chain). The testnet is written to a
# temporary folder and renamed into place, so an interrupted init leaves no half-written
# testnet behind that a later run would take for a complete one.
set -eu
net="${FLOBC_NET:-/net}"
target="$net/testnet"
if [ -d "$target" ]; then
    echo "flobc-init-testnet: keeping the testnet in $target:"
    sed -n 's/^chain_id = /  chain_id = /p; s/^genesis_time_ms = /  genesis_time_ms = /p' \
        "$target/genesis.toml"
    exit 0
fi
partial="$net/.testnet-partial"
rm -rf "$partial"
flobc testnet init --out "$partial" "$@"
mv "$partial" "$target"
echo "flobc-init-testnet: wrote the testnet to $target"
