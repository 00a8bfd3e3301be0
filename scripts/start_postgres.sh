#!/usr/bin/env bash
# Start Debian's PostgreSQL and create a greentune database for shared-study tests; prints the URL.
# usage: start_postgres.sh   (needs root and the postgresql package)
set -euo pipefail
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $2}' | grep -qx main; then
  pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
for _ in $(seq 50); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.2
done
su postgres -c "psql -q -tAc \"SELECT 1 FROM pg_roles WHERE rolname='greentune'\"" | grep -q 1 \
  || su postgres -c "psql -q -c \"CREATE ROLE greentune LOGIN PASSWORD 'greentune'\""
su postgres -c "psql -q -tAc \"SELECT 1 FROM pg_database WHERE datname='greentune'\"" | grep -q 1 \
  || su postgres -c "psql -q -c \"CREATE DATABASE greentune OWNER greentune\""
# CREATEROLE and CREATEDB let the secret-masking test make a throwaway role with a unique password and its database.
su postgres -c "psql -q -c \"ALTER ROLE greentune CREATEROLE CREATEDB\"" >/dev/null
echo "postgresql://greentune:greentune@127.0.0.1:5432/greentune"
