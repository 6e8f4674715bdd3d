-- Creates one login role for eip-meter, or resets its password, in one of the two group roles
-- the schema defines (run `eip-meter store migrate` first):
--
--   eip_meter_daemon   a router: registers itself under its sampler.host, inserts only its own
--                      host's rows (row-level security) and advances only its own watermark.
--   eip_meter_billing  the `eip-meter bill` job: reads every host's rows, writes figures.
--
-- One daemon role per router, so a compromised router can write nothing but its own samples:
--
--   psql -d billing -v role=router_a -v password="$(cat router_a.pw)" \
--        -v group=eip_meter_daemon -f deploy/postgres/login-role.sql
--   psql -d billing -v role=billing -v password="$(cat billing.pw)" \
--        -v group=eip_meter_billing -f deploy/postgres/login-role.sql
--
-- The password is hashed by the server (SCRAM-SHA-256, PostgreSQL's default since 14).
\set ON_ERROR_STOP on

-- Anything but the two groups is refused before a role is touched.
SELECT format('DO $check$ BEGIN RAISE EXCEPTION %L; END $check$',
              'group must be eip_meter_daemon or eip_meter_billing, not ' || :'group')
WHERE :'group' NOT IN ('eip_meter_daemon', 'eip_meter_billing')
\gexec

SELECT format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE %I', :'role', :'password', :'group')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
UNION ALL
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password')
WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
UNION ALL
SELECT format('GRANT %I TO %I', :'group', :'role')
WHERE EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
\gexec
