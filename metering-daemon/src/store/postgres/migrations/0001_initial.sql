-- eip-meter billing store, schema 1. Applied by `eip-meter store migrate` (or by a daemon whose
-- role owns the schema), in one transaction, recorded in eip_meter_schema.
--
-- Every table that grows with the fleet is keyed by its subject first (eip or subject), so
-- the schema distributes on Citus by that column (see deploy/postgres/README.md).

CREATE TABLE eip_meter_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Group roles: routers log in with a role that is a member of eip_meter_daemon; the billing
-- job with one in eip_meter_billing (deploy/postgres/roles.sql creates the login roles).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eip_meter_daemon') THEN
        CREATE ROLE eip_meter_daemon NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eip_meter_billing') THEN
        CREATE ROLE eip_meter_billing NOLOGIN;
    END IF;
END $$;

-- One row per router. `instance` is its local store's identity: a second machine claiming the
-- same host name is refused, never merged. `db_role` is the login role that owns its rows.
CREATE TABLE hosts (
    host text PRIMARY KEY,
    instance text NOT NULL,
    db_role name NOT NULL DEFAULT current_user,
    interval_seconds integer NOT NULL,
    timezone text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- Where each host's shipping stands: the last local commit (seq) this store holds. Advanced
-- in the same transaction as the rows, so a crash neither loses nor repeats a round.
CREATE TABLE watermarks (
    host text PRIMARY KEY REFERENCES hosts,
    seq bigint NOT NULL,
    boundary bigint NOT NULL,
    shipped_at timestamptz NOT NULL DEFAULT now()
);

-- A watermark only moves forward for a router: moving it back would make it ship rounds again
-- (harmless, rows are idempotent) but would also hide where it stood. Superusers may (restores).
CREATE FUNCTION eip_meter_watermark_advances() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
    IF NEW.seq < OLD.seq AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        RAISE EXCEPTION 'the watermark of % only advances (% -> %)', OLD.host, OLD.seq, NEW.seq;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER watermark_advances BEFORE UPDATE ON watermarks
    FOR EACH ROW EXECUTE FUNCTION eip_meter_watermark_advances();

-- The intervals each host sampled: complete (every uplink metered), incomplete (an uplink was
-- not, for part of it), spread (the daemon was down: a delta spread over the interval).
-- With `presence`, what tells a measured zero (no sample row) from a missing interval.
CREATE TABLE rounds (
    host text NOT NULL,
    interval_start bigint NOT NULL,
    interval_seconds integer NOT NULL,
    coverage text NOT NULL CHECK (coverage IN ('complete', 'incomplete', 'spread')),
    PRIMARY KEY (host, interval_start)
);

-- When an EIP was in a host's inventory: interval starts [from_s, to_s), to_s NULL while it is.
CREATE TABLE presence (
    eip inet NOT NULL,
    host text NOT NULL,
    from_s bigint NOT NULL,
    to_s bigint,
    PRIMARY KEY (eip, host, from_s)
);

-- Samples with traffic (and the partial ones a round cannot imply); a sample's identity is
-- (eip, interval_start, host): sending it again is a no-op, other values are a conflict.
-- Range-partitioned by UTC month of interval_start, so a month can be archived and dropped.
CREATE TABLE samples (
    eip inet NOT NULL,
    interval_start bigint NOT NULL,
    host text NOT NULL,
    interval_seconds integer NOT NULL,
    bytes_in bigint NOT NULL CHECK (bytes_in >= 0),
    bytes_out bigint NOT NULL CHECK (bytes_out >= 0),
    state text NOT NULL CHECK (state IN ('measured', 'partial')),
    PRIMARY KEY (eip, interval_start, host)
) PARTITION BY RANGE (interval_start);

-- Refused rows: the same key with other values. An alarm, never a sum.
CREATE TABLE sample_conflicts (
    eip inet NOT NULL,
    interval_start bigint NOT NULL,
    host text NOT NULL,
    stored_in bigint NOT NULL,
    stored_out bigint NOT NULL,
    stored_state text NOT NULL,
    offered_in bigint NOT NULL,
    offered_out bigint NOT NULL,
    offered_state text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sample_conflicts_by_eip ON sample_conflicts (eip, interval_start);

-- Every change of an EIP's or shared bandwidth's bandwidth, group or state, as each host
-- applied it: baselines and in-use time are billed from it.
CREATE TABLE inventory_history (
    subject text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('eip', 'group')),
    host text NOT NULL,
    effective_from bigint NOT NULL,
    bandwidth_mbps bigint,
    grp text,
    state text NOT NULL,
    PRIMARY KEY (subject, kind, host, effective_from)
);

-- Fleet figures by `eip-meter bill`: one row per subject, period (YYYY-MM-DD or YYYY-MM) and
-- revision. A recomputation that changes nothing adds nothing; one that changes anything (a
-- late sample) adds the next revision, never an in-place change.
CREATE TABLE figures (
    subject text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('eip', 'group')),
    period text NOT NULL,
    revision integer NOT NULL,
    closed boolean NOT NULL,
    figures jsonb NOT NULL,
    hosts text[] NOT NULL,
    samples integer NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, kind, period, revision)
);

-- Monthly partitions of `samples`, created on demand by the daemons (who may not create
-- tables themselves). Serialised, since two routers may ask at once.
CREATE FUNCTION eip_meter_ensure_partitions(from_s bigint, to_s bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    m timestamp := date_trunc('month', to_timestamp(from_s) AT TIME ZONE 'UTC');
    lo bigint;
    hi bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('eip_meter_partitions'));
    WHILE extract(epoch FROM m AT TIME ZONE 'UTC') < to_s LOOP
        lo := extract(epoch FROM m AT TIME ZONE 'UTC');
        hi := extract(epoch FROM (m + interval '1 month') AT TIME ZONE 'UTC');
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS public.%I PARTITION OF public.samples FOR VALUES FROM (%s) TO (%s)',
            'samples_' || to_char(m, 'YYYY_MM'), lo, hi);
        m := m + interval '1 month';
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION eip_meter_ensure_partitions(bigint, bigint) FROM PUBLIC;

-- Which hosts the current login role may write: its own.
CREATE FUNCTION eip_meter_own_host(h text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT EXISTS (SELECT 1 FROM public.hosts WHERE host = h AND db_role = session_user)
$$;

-- The daemons: their own host's rows only (row-level security), and their own watermark.
GRANT USAGE ON SCHEMA public TO eip_meter_daemon, eip_meter_billing;
GRANT SELECT ON eip_meter_schema TO eip_meter_daemon, eip_meter_billing;
GRANT SELECT, INSERT ON hosts TO eip_meter_daemon;
GRANT SELECT, INSERT, UPDATE ON watermarks TO eip_meter_daemon;
GRANT SELECT, INSERT ON rounds, samples, sample_conflicts, inventory_history TO eip_meter_daemon;
GRANT SELECT, INSERT, UPDATE ON presence TO eip_meter_daemon;
GRANT EXECUTE ON FUNCTION eip_meter_ensure_partitions(bigint, bigint), eip_meter_own_host(text)
    TO eip_meter_daemon;
-- The billing job: reads what the daemons wrote, writes figures.
GRANT SELECT ON hosts, watermarks, rounds, presence, samples, sample_conflicts,
    inventory_history TO eip_meter_billing;
GRANT SELECT, INSERT, UPDATE ON figures TO eip_meter_billing;

ALTER TABLE hosts ENABLE ROW LEVEL SECURITY;
CREATE POLICY daemon_reads_hosts ON hosts FOR SELECT TO eip_meter_daemon USING (true);
CREATE POLICY daemon_registers_itself ON hosts FOR INSERT TO eip_meter_daemon
    WITH CHECK (db_role = session_user);
CREATE POLICY billing_reads ON hosts FOR SELECT TO eip_meter_billing USING (true);

ALTER TABLE watermarks ENABLE ROW LEVEL SECURITY;
CREATE POLICY daemon_own ON watermarks TO eip_meter_daemon
    USING (eip_meter_own_host(host)) WITH CHECK (eip_meter_own_host(host));
CREATE POLICY billing_reads ON watermarks FOR SELECT TO eip_meter_billing USING (true);

ALTER TABLE rounds ENABLE ROW LEVEL SECURITY;
CREATE POLICY daemon_own ON rounds TO eip_meter_daemon
    USING (eip_meter_own_host(host)) WITH CHECK (eip_meter_own_host(host));
CREATE POLICY billing_reads ON rounds FOR SELECT TO eip_meter_billing USING (true);

ALTER TABLE presence ENABLE ROW LEVEL SECURITY;
CREATE POLICY daemon_own ON presence TO eip_meter_daemon
    USING (eip_meter_own_host(host)) WITH CHECK (eip_meter_own_host(host));
CREATE POLICY billing_reads ON presence FOR SELECT TO eip_meter_billing USING (true);

ALTER TABLE samples ENABLE ROW LEVEL SECURITY;
CREATE POLICY daemon_own ON samples TO eip_meter_daemon
    USING (eip_meter_own_host(host)) WITH CHECK (eip_meter_own_host(host));
CREATE POLICY billing_reads ON samples FOR SELECT TO eip_meter_billing USING (true);

ALTER TABLE sample_conflicts ENABLE ROW LEVEL SECURITY;
CREATE POLICY daemon_own ON sample_conflicts TO eip_meter_daemon
    USING (eip_meter_own_host(host)) WITH CHECK (eip_meter_own_host(host));
CREATE POLICY billing_reads ON sample_conflicts FOR SELECT TO eip_meter_billing USING (true);

ALTER TABLE inventory_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY daemon_own ON inventory_history TO eip_meter_daemon
    USING (eip_meter_own_host(host)) WITH CHECK (eip_meter_own_host(host));
CREATE POLICY billing_reads ON inventory_history FOR SELECT TO eip_meter_billing USING (true);
