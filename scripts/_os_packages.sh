# Sourced by scripts/test.sh: installs the OS packages the suite starts for real (a Prometheus
# server and promtool for the metrics and alert-rule tests, headless Chromium for the run-page
# pictures, HAProxy in front of the two Prefect API servers of the multi-host tests) when they
# are missing. Needs root and apt-get (as on the development machines and CI); elsewhere it
# says what to install and the tests that need them skip with the same words.
botai_os_packages() {
    local missing=()
    command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing OS packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || echo "could not install ${missing[*]}: the tests that need them will skip" >&2
    else
        echo "missing OS packages: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})" >&2
    fi
}
botai_os_packages
