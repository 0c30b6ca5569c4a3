#!/usr/bin/env bash
# Print the path of stripe-mock, Stripe's API stand-in made from its OpenAPI spec (pinned below):
# built once with `go install` into .devstack/stripe-mock-VERSION (under PAYMENT_DEVSTACK_DIR when
# set, as for the local broker). Used by tests/integration/test_stripe_mock.py.
set -euo pipefail
version=v0.203.0
module=github.com/stripe/stripe-mock
cache="$(realpath -m "${PAYMENT_DEVSTACK_DIR:-$(dirname "$0")/../.devstack}")"
bin="$cache/stripe-mock-$version"
tool="$bin/stripe-mock"
if [ ! -x "$tool" ]; then
    if ! command -v go >/dev/null 2>&1; then
        echo "stripe-mock: Go is needed to build it (go install $module@$version)" >&2
        exit 1
    fi
    mkdir -p "$bin"
    out="$(GOBIN="$bin" go install "$module@$version" 2>&1)" || {
        echo "stripe-mock: 'go install $module@$version' failed: ${out##*$'\n'}" >&2
        exit 1
    }
fi
echo "$tool"
