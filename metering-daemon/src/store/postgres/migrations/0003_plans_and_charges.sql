-- Each subject's billing plan as each host applied it (rated by `eip-meter bill --prices`).
ALTER TABLE inventory_history
    ADD COLUMN plan text,
    ADD COLUMN plan_start bigint,
    ADD COLUMN plan_months integer;

-- Charge lines by `eip-meter bill --prices`: one per subject, item and interval, in the price
-- file's currency; `exact` before rounding, `amount` settled (rounded once, half away from
-- zero, to the cent). Billing the same period again updates a line only if it changed.
CREATE TABLE charges (
    subject text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('eip', 'group')),
    plan text NOT NULL,
    item text NOT NULL,
    from_s bigint NOT NULL,
    to_s bigint NOT NULL,
    settled_at bigint NOT NULL,
    quantity numeric NOT NULL,
    unit text NOT NULL,
    unit_price numeric NOT NULL,
    exact numeric NOT NULL,
    amount numeric(20, 2) NOT NULL,
    currency text NOT NULL,
    figures jsonb NOT NULL,
    computed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, kind, item, from_s, settled_at)
);
CREATE INDEX charges_by_settlement ON charges (settled_at);

GRANT SELECT, INSERT, UPDATE ON charges TO eip_meter_billing;
