-- Every change of each host's inventory, as the host applied it: when (applied, in ms, and
-- effective, the control plane's time), by whom (source `file`, `api`, `sync` or `rollback`,
-- and the caller's uid), the subject before and after. `local_id` is the row's id in the
-- host's local store: a batch shipped twice adds nothing.
CREATE TABLE inventory_audit (
    host text NOT NULL,
    local_id bigint NOT NULL,
    applied_at_ms bigint NOT NULL,
    effective_from bigint NOT NULL,
    source text NOT NULL,
    uid bigint,
    kind text NOT NULL CHECK (kind IN ('eip', 'group')),
    subject text NOT NULL,
    before jsonb,
    after jsonb,
    PRIMARY KEY (host, local_id)
);
CREATE INDEX inventory_audit_by_subject ON inventory_audit (subject, applied_at_ms);

GRANT SELECT, INSERT ON inventory_audit TO eip_meter_daemon;
GRANT SELECT ON inventory_audit TO eip_meter_billing;
ALTER TABLE inventory_audit ENABLE ROW LEVEL SECURITY;
CREATE POLICY daemon_own ON inventory_audit TO eip_meter_daemon
    USING (eip_meter_own_host(host)) WITH CHECK (eip_meter_own_host(host));
CREATE POLICY billing_reads ON inventory_audit FOR SELECT TO eip_meter_billing USING (true);
