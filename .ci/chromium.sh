# Sourced by .ci/run: Chromium for the dashboard's browser test, from Debian's package.
# Installs it when missing (as root) and exports TOKENFACTORY_CHROMIUM. Elsewhere (no root,
# no apt) it says why; the browser test then fails under CI=true and skips otherwise.
find_chromium() {
    if ! command -v chromium >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            echo "ci: no Chromium and no root apt-get: the dashboard's browser test cannot run" >&2
            return 0
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
    TOKENFACTORY_CHROMIUM=$(command -v chromium)
    export TOKENFACTORY_CHROMIUM
    echo "ci: $("$TOKENFACTORY_CHROMIUM" --version 2>/dev/null || echo chromium) at $TOKENFACTORY_CHROMIUM"
}
find_chromium
