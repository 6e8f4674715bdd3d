//! Edits of the config file for live changes (`eip-meter eip ...`, `eip-meter group ...`).
//!
//! Pure text in, text out, with `toml_edit` so the operator's comments and layout survive. The
//! caller validates the result with [`crate::config::Config::parse`] before writing it, so a bad
//! change never reaches the file or the daemon.

use std::net::IpAddr;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};

use crate::{addr::normalize, billing::plans::Plan, config::EipState};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("the config is not valid TOML: {0}")]
    Parse(String),
    #[error("EIP {0} is not in the config")]
    NoSuchEip(IpAddr),
    #[error("group `{0}` is not in the config")]
    NoSuchGroup(String),
    #[error("group `{name}` is new: give it a --bandwidth")]
    NewGroupNeedsBandwidth { name: String },
    #[error("EIP {0} has no monthly package in the config to renew (give --plan monthly)")]
    NotAPackage(IpAddr),
    #[error("group `{name}` still has {members} EIP(s); move them first")]
    GroupInUse { name: String, members: usize },
    #[error("`{key}` in the config is not a list of [[{key}]] tables")]
    NotTables { key: &'static str },
    #[error("{what} is in the config {count} times; keep one entry before editing it")]
    Duplicate { what: String, count: usize },
}

/// A field to leave alone, set, or delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Change<T> {
    #[default]
    Keep,
    Set(T),
    Clear,
}

/// What `eip-meter eip set` changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EipChanges {
    pub bandwidth_mbps: Change<u64>,
    pub inbound_mbps: Change<u64>,
    pub outbound_mbps: Change<u64>,
    /// Joining a group clears the EIP's own bandwidths (the group's cap applies).
    pub group: Change<String>,
    pub state: Option<EipState>,
    /// A new plan (a monthly package with its start and length).
    pub plan: Option<crate::billing::plans::Plan>,
    /// Months a monthly package is renewed by (or an hourly or traffic plan converted into).
    pub renew_months: Option<u32>,
}

/// What `eip-meter group set` changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupChanges {
    pub bandwidth_mbps: Option<u64>,
    pub inbound_mbps: Change<u64>,
    pub outbound_mbps: Change<u64>,
    pub plan: Option<Plan>,
}

fn parse(text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>()
        .map_err(|e| EditError::Parse(e.to_string()))
}

fn tables<'a>(
    doc: &'a mut DocumentMut,
    key: &'static str,
) -> Result<&'a mut ArrayOfTables, EditError> {
    if !doc.contains_key(key) {
        doc.insert(key, Item::ArrayOfTables(ArrayOfTables::new()));
    }
    doc[key]
        .as_array_of_tables_mut()
        .ok_or(EditError::NotTables { key })
}

/// The one table of `key` that `matches`; an entry listed twice is refused rather than edited
/// in one place and left as it was in the other.
fn find_one(
    doc: &mut DocumentMut,
    key: &'static str,
    what: impl FnOnce() -> String,
    matches: impl Fn(&Table) -> bool,
) -> Result<Option<usize>, EditError> {
    let found: Vec<usize> = tables(doc, key)?
        .iter()
        .enumerate()
        .filter(|(_, t)| matches(t))
        .map(|(i, _)| i)
        .collect();
    match found[..] {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(EditError::Duplicate {
            what: what(),
            count: found.len(),
        }),
    }
}

fn eip_index(doc: &mut DocumentMut, addr: IpAddr) -> Result<Option<usize>, EditError> {
    let want = normalize(addr);
    find_one(
        doc,
        "eip",
        || format!("EIP {addr}"),
        |t| {
            t.get("address")
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_some_and(|a| normalize(a) == want)
        },
    )
}

fn group_index(doc: &mut DocumentMut, name: &str) -> Result<Option<usize>, EditError> {
    find_one(
        doc,
        "group",
        || format!("group `{name}`"),
        |t| t.get("name").and_then(|n| n.as_str()) == Some(name),
    )
}

fn apply_u64(table: &mut Table, key: &str, change: &Change<u64>) {
    match change {
        Change::Keep => {}
        Change::Set(v) => {
            table[key] = value(*v as i64);
        }
        Change::Clear => {
            table.remove(key);
        }
    }
}

/// Adds `addr` (when missing) or changes it.
pub fn set_eip(text: &str, addr: IpAddr, changes: &EipChanges) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let index = match eip_index(&mut doc, addr)? {
        Some(i) => i,
        None => {
            let mut t = Table::new();
            t["address"] = value(normalize(addr).to_string());
            let eips = tables(&mut doc, "eip")?;
            eips.push(t);
            eips.len() - 1
        }
    };
    let table = tables(&mut doc, "eip")?
        .get_mut(index)
        .expect("index found above");
    match &changes.group {
        Change::Keep => {}
        Change::Set(g) => {
            table["group"] = value(g.as_str());
            for key in ["bandwidth_mbps", "inbound_mbps", "outbound_mbps"] {
                table.remove(key);
            }
        }
        Change::Clear => {
            table.remove("group");
        }
    }
    apply_u64(table, "bandwidth_mbps", &changes.bandwidth_mbps);
    apply_u64(table, "inbound_mbps", &changes.inbound_mbps);
    apply_u64(table, "outbound_mbps", &changes.outbound_mbps);
    if let Some(state) = changes.state {
        if state == EipState::Active {
            table.remove("state");
        } else {
            table["state"] = value(state.as_str());
        }
    }
    if let Some(plan) = changes.plan {
        set_plan(table, plan);
    }
    if let Some(n) = changes.renew_months {
        let months = table
            .get("plan_months")
            .and_then(|m| m.as_integer())
            .filter(|_| table.get("plan").and_then(|p| p.as_str()) == Some("monthly"))
            .ok_or(EditError::NotAPackage(addr))?;
        table["plan_months"] = value(months + i64::from(n));
    }
    Ok(doc.to_string())
}

/// Writes a plan into an `[[eip]]` or `[[group]]` table (replacing the one there).
fn set_plan(table: &mut Table, plan: Plan) {
    table["plan"] = value(plan.name());
    table.remove("plan_start");
    table.remove("plan_months");
    if let Plan::Monthly { start, months } = plan {
        let start = chrono::DateTime::from_timestamp(start, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        table["plan_start"] = value(start);
        table["plan_months"] = value(i64::from(months));
    }
}

pub fn remove_eip(text: &str, addr: IpAddr) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let index = eip_index(&mut doc, addr)?.ok_or(EditError::NoSuchEip(addr))?;
    tables(&mut doc, "eip")?.remove(index);
    Ok(doc.to_string())
}

/// Adds group `name` (a new one needs a bandwidth) or changes it.
pub fn set_group(text: &str, name: &str, changes: &GroupChanges) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let index = match group_index(&mut doc, name)? {
        Some(i) => i,
        None => {
            if changes.bandwidth_mbps.is_none() {
                return Err(EditError::NewGroupNeedsBandwidth {
                    name: name.to_owned(),
                });
            }
            let mut t = Table::new();
            t["name"] = value(name);
            let groups = tables(&mut doc, "group")?;
            groups.push(t);
            groups.len() - 1
        }
    };
    let table = tables(&mut doc, "group")?
        .get_mut(index)
        .expect("index found above");
    if let Some(bw) = changes.bandwidth_mbps {
        table["bandwidth_mbps"] = value(bw as i64);
    }
    apply_u64(table, "inbound_mbps", &changes.inbound_mbps);
    apply_u64(table, "outbound_mbps", &changes.outbound_mbps);
    if let Some(plan) = changes.plan {
        set_plan(table, plan);
    }
    Ok(doc.to_string())
}

pub fn remove_group(text: &str, name: &str) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let index =
        group_index(&mut doc, name)?.ok_or_else(|| EditError::NoSuchGroup(name.to_owned()))?;
    let members = tables(&mut doc, "eip")?
        .iter()
        .filter(|t| t.get("group").and_then(|g| g.as_str()) == Some(name))
        .count();
    if members > 0 {
        return Err(EditError::GroupInUse {
            name: name.to_owned(),
            members,
        });
    }
    tables(&mut doc, "group")?.remove(index);
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AnyInterface, Config};

    const BASE: &str = "# operator's comment\n[dataplane]\ninterfaces = [\"eth0\"] # uplink\n\n[[eip]]\naddress = \"203.0.113.10\"\nbandwidth_mbps = 100\n";

    fn valid(text: &str) -> Config {
        Config::parse(text, &AnyInterface).unwrap_or_else(|p| panic!("{p:?}\n{text}"))
    }

    /// Fuzzing found an `eip remove` that said it removed an EIP listed twice and left one.
    #[test]
    fn an_entry_listed_twice_or_a_key_of_another_shape_is_refused() {
        let eip: IpAddr = "203.0.113.10".parse().unwrap();
        let twice = format!("{BASE}\n[[eip]]\naddress = \"203.0.113.10\"\n");
        let duplicate = Err(EditError::Duplicate {
            what: "EIP 203.0.113.10".into(),
            count: 2,
        });
        assert_eq!(remove_eip(&twice, eip), duplicate);
        assert_eq!(set_eip(&twice, eip, &EipChanges::default()), duplicate);
        assert_eq!(
            set_eip("eip = 1\n", eip, &EipChanges::default()),
            Err(EditError::NotTables { key: "eip" })
        );
    }

    #[test]
    fn resize_keeps_comments_and_validates() {
        let changes = EipChanges {
            bandwidth_mbps: Change::Set(20),
            ..Default::default()
        };
        let out = set_eip(BASE, "203.0.113.10".parse().unwrap(), &changes).unwrap();
        assert!(out.contains("# operator's comment") && out.contains("# uplink"));
        assert_eq!(valid(&out).eips[0].bandwidth_mbps, Some(20));
    }

    #[test]
    fn add_block_move_and_remove() {
        let addr: IpAddr = "2001:db8::7".parse().unwrap();
        let out = set_eip(
            BASE,
            addr,
            &EipChanges {
                state: Some(EipState::Frozen),
                ..Default::default()
            },
        )
        .unwrap();
        let c = valid(&out);
        assert_eq!(c.eips[1].address, addr);
        assert_eq!(c.eips[1].state, EipState::Frozen);

        let out = set_group(
            &out,
            "g1",
            &GroupChanges {
                bandwidth_mbps: Some(300),
                ..Default::default()
            },
        )
        .unwrap();
        let out = set_eip(
            &out,
            "203.0.113.10".parse().unwrap(),
            &EipChanges {
                group: Change::Set("g1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let c = valid(&out);
        assert_eq!(c.eips[0].group.as_deref(), Some("g1"));
        assert_eq!(c.eips[0].bandwidth_mbps, None, "own cap cleared in a group");
        assert_eq!(
            remove_group(&out, "g1"),
            Err(EditError::GroupInUse {
                name: "g1".into(),
                members: 1
            })
        );
        let out = remove_eip(&out, "203.0.113.10".parse().unwrap()).unwrap();
        let out = remove_group(&out, "g1").unwrap();
        assert_eq!(valid(&out).eips.len(), 1);
        assert_eq!(
            remove_eip(&out, "203.0.113.10".parse().unwrap()),
            Err(EditError::NoSuchEip("203.0.113.10".parse().unwrap()))
        );
    }

    #[test]
    fn a_new_group_needs_a_bandwidth() {
        assert!(matches!(
            set_group(BASE, "g2", &GroupChanges::default()),
            Err(EditError::NewGroupNeedsBandwidth { .. })
        ));
    }
}
