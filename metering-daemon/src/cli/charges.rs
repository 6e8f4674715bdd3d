//! `eip-meter bill --prices`: the billing store's subjects with a plan rated for the period,
//! their charge lines written to `charges` (all of them, or none when any subject cannot be
//! rated).

use std::{collections::BTreeMap, process::ExitCode};

use crate::{
    billing::{
        GbUnit,
        calendar::Calendar,
        series::{DayFigures, MonthFigures},
    },
    rating::{ChargeLine, Life, Plan, Prices, Window, charges},
    store::postgres::{
        Db,
        bill::BillPeriod,
        charges::{ChargeRow, PlanInput, plan_inputs, write_charges},
    },
};

pub(super) async fn rate_period(
    db: &mut Db,
    period: BillPeriod,
    calendar: &Calendar,
    gb_unit: GbUnit,
    prices: &Prices,
) -> anyhow::Result<ExitCode> {
    let (from, to) = match period {
        BillPeriod::Day(d) => calendar.day_bounds(d),
        BillPeriod::Month(m) => calendar.month_bounds(m),
    };
    let mut periods: Vec<String> = Vec::new();
    let mut day = calendar.day_of(from);
    while calendar.day_bounds(day).0 < to {
        periods.push(day.to_string());
        day = day.succ_opt().expect("a next day");
    }
    if let BillPeriod::Month(m) = period {
        periods.push(m.to_string());
    }
    let inputs = plan_inputs(db, from, to, &periods).await?;
    let window = Window { from, to };
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for input in &inputs {
        match rate_one(input, prices, calendar, gb_unit, window) {
            Ok(lines) => rows.extend(lines.into_iter().map(|l| row(input, l, &prices.currency))),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!(
            "{} subject(s) cannot be rated; no charge line written",
            problems.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    let written = write_charges(db, &rows).await?;
    let total: rust_decimal::Decimal = rows
        .iter()
        .filter_map(|r| r.amount.parse::<rust_decimal::Decimal>().ok())
        .sum();
    println!(
        "charges: {} line(s) for {} subject(s) with a plan, {} new or changed, {} unchanged; total {total} {}",
        rows.len(),
        inputs.len(),
        written,
        rows.len() - written,
        prices.currency
    );
    Ok(ExitCode::SUCCESS)
}

fn rate_one(
    input: &PlanInput,
    prices: &Prices,
    calendar: &Calendar,
    gb_unit: GbUnit,
    window: Window,
) -> Result<Vec<ChargeLine>, String> {
    let subject = &input.subject;
    let life = Life {
        created: input.created,
        deleted: input.deleted,
        stopped: &input.stopped,
    };
    let parse = |what: &str, key: &str, v: &serde_json::Value| {
        format!("{subject}: the billing store's {what} figures of {key} are unreadable: {v}")
    };
    let plan = Plan::from_parts(&input.plan, input.plan_start, input.plan_months)
        .map_err(|e| format!("{subject}: {}", crate::billing::plans::describe(&e)))?;
    let mut days = BTreeMap::new();
    for (k, v) in &input.days {
        let f: DayFigures = serde_json::from_value(v.clone()).map_err(|_| parse("day", k, v))?;
        days.insert(k.clone(), f);
    }
    let mut months = BTreeMap::new();
    for (k, v) in &input.months {
        let f: MonthFigures =
            serde_json::from_value(v.clone()).map_err(|_| parse("month", k, v))?;
        months.insert(k.clone(), f);
    }
    charges::rate(
        &charges::Subject {
            name: subject,
            plan,
            life,
            bandwidth: &input.bandwidth,
            days: &days,
            months: &months,
        },
        prices,
        gb_unit,
        calendar,
        window,
    )
    .map_err(|e| e.to_string())
}

fn row(input: &PlanInput, l: ChargeLine, currency: &str) -> ChargeRow {
    ChargeRow {
        kind: input.kind.clone(),
        subject: l.subject,
        plan: l.plan.to_owned(),
        item: l.item.to_owned(),
        from: l.from,
        to: l.to,
        settled_at: l.settled_at,
        quantity: l.quantity.to_string(),
        unit: l.unit.to_owned(),
        unit_price: l.unit_price.to_string(),
        exact: l.exact.to_string(),
        amount: l.amount.to_string(),
        currency: currency.to_owned(),
        figures: l.figures,
    }
}
