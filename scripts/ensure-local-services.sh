#!/usr/bin/env bash
# Start the local PostgreSQL, Redis, RabbitMQ and MariaDB of a test machine when they do not answer.
# Commands are those of the CI machine image (Debian packages, no systemd).
set -uo pipefail

answers() { timeout 2 bash -c ":> /dev/tcp/127.0.0.1/$1" 2>/dev/null; }

amqp_answers() {
  python3 - <<'PY'
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 5672), timeout=3) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        sys.exit(0 if sock.recv(1) == b"\x01" else 1)
except OSError:
    sys.exit(1)
PY
}

wait_for() {  # name, check command..., up to 90 s
  local name=$1; shift
  for _ in $(seq 1 90); do "$@" && { echo "$name: answering"; return 0; }; sleep 1; done
  echo "$name: still not answering after 90 s" >&2
  return 1
}

status=0
if ! answers 5432; then
  echo "postgresql: starting"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for postgresql answers 5432 || status=1
fi
if ! answers 6379; then
  echo "redis: starting"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  wait_for redis answers 6379 || status=1
fi
if ! amqp_answers; then
  echo "rabbitmq: starting"
  rabbitmq-server -detached || true
  wait_for rabbitmq amqp_answers || status=1
fi
if ! answers 3306; then  # the data-source and extra-bind tests connect to it
  echo "mariadb: starting"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_for mariadb answers 3306 || status=1
fi
exit $status
