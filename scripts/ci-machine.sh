#!/usr/bin/env bash
# Make a fresh Debian or Ubuntu machine (a hosted CI runner) into the test machine `.ci/run`
# expects: PostgreSQL on 127.0.0.1:5432 with trust auth for `postgres`, Redis on 6379, RabbitMQ
# on 5672 (guest/guest, `rabbitmqctl` for the tests' own vhosts), MariaDB on 3306 (root, no
# password, database `test`), and the tools the tests drive: jq, wrk, Prometheus, Alertmanager,
# kubectl.
# Run as root (sudo). Safe to run twice; it changes nothing a configured machine already has.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "ci-machine.sh: run it as root (sudo $0)" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive

packages=(postgresql redis-server rabbitmq-server jq wrk prometheus prometheus-alertmanager)
# A runner image may carry MySQL on 3306: MariaDB replaces it (the tests speak to MariaDB).
command -v mariadbd >/dev/null || packages+=(mariadb-server)
command -v kubectl >/dev/null || packages+=(kubernetes-client)
apt-get update -qq
apt-get install -y -qq "${packages[@]}" >/dev/null

# PostgreSQL: trust for local and loopback connections, as on the test machine.
for hba in /etc/postgresql/*/main/pg_hba.conf; do
  sed -E -i '/^(local|host)\s/ s/(peer|md5|scram-sha-256)\s*$/trust/' "$hba"
done
version=$(ls /etc/postgresql | head -n1)
pg_ctlcluster --skip-systemctl-redirect "$version" main restart ||
  pg_ctlcluster --skip-systemctl-redirect "$version" main start

# The rest is started by the script `.ci/run` calls, when it does not answer yet.
scripts/ensure-local-services.sh

# MariaDB: root over TCP with no password (the unix socket keeps working), database `test`.
mariadb --protocol=socket -uroot <<'SQL'
ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
CREATE DATABASE IF NOT EXISTS test;
SQL
echo "ci-machine.sh: PostgreSQL, Redis, RabbitMQ and MariaDB answer on 127.0.0.1"
