# Sourced by .ci/run: a real PostgreSQL for the ledger tests, from Debian's package.
# Installs it when missing (as root), starts the cluster, and exports
# TOKENFACTORY_TEST_POSTGRES_URL and TOKENFACTORY_TEST_POSTGRES_CTL. Elsewhere (no root, no
# apt) it says why and the PostgreSQL tests skip.
start_postgres() {
    if ! command -v pg_lsclusters >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            echo "ci: no PostgreSQL and no root apt-get: the PostgreSQL tests will skip" >&2
            return 0
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    local version
    version=$(pg_lsclusters --no-header | awk 'NR==1 {print $1}')
    if [ -z "$version" ]; then
        version=$(ls /usr/lib/postgresql | sort -n | tail -1)
        pg_createcluster "$version" main >/dev/null
    fi
    pg_ctlcluster "$version" main start 2>/dev/null || true
    for _ in $(seq 30); do
        pg_isready -q -h 127.0.0.1 && break
        sleep 1
    done
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'tokenfactory-ci'\"" >/dev/null
    export TOKENFACTORY_TEST_POSTGRES_URL="postgresql://postgres:tokenfactory-ci@127.0.0.1:5432/postgres"
    # this cluster is CI's own: the ledger's restart tests may stop and start it
    export TOKENFACTORY_TEST_POSTGRES_CTL="pg_ctlcluster $version main"
    echo "ci: PostgreSQL $version at 127.0.0.1:5432"
}
start_postgres
