//! `eip-meter compute`'s input on disk: the rows of its CSV files in a temporary SQLite file,
//! keyed by EIP first, so the figures are computed one EIP at a time and memory stays bounded
//! whatever the input's size (a month of 100,000 EIPs does not fit in memory as rows). The file
//! is removed when the staging is dropped.

use std::net::IpAddr;

use rusqlite::{Connection, params};

use crate::billing::fleet::{Presence, Row};

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("compute staging file: {0}")]
    Io(#[from] std::io::Error),
    #[error("compute staging file: {op}: {source}")]
    Sql {
        op: &'static str,
        source: rusqlite::Error,
    },
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StagingError {
    move |source| StagingError::Sql { op, source }
}

/// An address as a key that sorts like [`IpAddr`] (IPv4 before IPv6, then numerically).
fn key(eip: IpAddr) -> Vec<u8> {
    match eip {
        IpAddr::V4(a) => [&[4u8][..], &a.octets()].concat(),
        IpAddr::V6(a) => [&[6u8][..], &a.octets()].concat(),
    }
}

fn from_key(k: &[u8]) -> Option<IpAddr> {
    match (k.first(), k.len()) {
        (Some(4), 5) => Some(IpAddr::from(<[u8; 4]>::try_from(&k[1..]).ok()?)),
        (Some(6), 17) => Some(IpAddr::from(<[u8; 16]>::try_from(&k[1..]).ok()?)),
        _ => None,
    }
}

const SCHEMA: &str = "
CREATE TABLE samples (
    eip BLOB NOT NULL, start INTEGER NOT NULL, host INTEGER NOT NULL, line INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL, partial INTEGER NOT NULL,
    PRIMARY KEY (eip, start, host)) WITHOUT ROWID;
CREATE TABLE presence (
    eip BLOB NOT NULL, host INTEGER NOT NULL, from_s INTEGER NOT NULL, to_s INTEGER,
    PRIMARY KEY (eip, host, from_s)) WITHOUT ROWID;
CREATE TABLE hosts (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
";

/// The staged rows. Add everything, then [`Staging::finish_loading`], then read per EIP.
pub struct Staging {
    conn: Connection,
    _dir: tempfile::TempDir,
    hosts: std::collections::HashMap<String, i64>,
}

impl Staging {
    /// A new, empty staging file in the system's temporary directory (`$TMPDIR`).
    pub fn new() -> Result<Self, StagingError> {
        let dir = tempfile::Builder::new()
            .prefix("eip-meter-compute-")
            .tempdir()?;
        let conn = Connection::open(dir.path().join("staging.db")).map_err(sql("open"))?;
        // A scratch file: no journal, no fsync; a page cache big enough for the insert points
        // of every EIP at once.
        conn.execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -131072;
             PRAGMA temp_store = FILE;",
        )
        .map_err(sql("configure"))?;
        conn.execute_batch(SCHEMA).map_err(sql("create tables"))?;
        conn.execute_batch("BEGIN").map_err(sql("begin"))?;
        Ok(Self {
            conn,
            _dir: dir,
            hosts: std::collections::HashMap::new(),
        })
    }

    /// The number of a host name (the empty name is a host too: rows without one).
    pub fn host_id(&mut self, name: &str) -> Result<i64, StagingError> {
        if let Some(&id) = self.hosts.get(name) {
            return Ok(id);
        }
        let id = self.hosts.len() as i64;
        self.conn
            .execute(
                "INSERT INTO hosts (id, name) VALUES (?1, ?2)",
                params![id, name],
            )
            .map_err(sql("add host"))?;
        self.hosts.insert(name.to_owned(), id);
        Ok(id)
    }

    /// Known host names, by number.
    pub fn host_names(&self) -> Vec<String> {
        let mut names = vec![String::new(); self.hosts.len()];
        for (name, &id) in &self.hosts {
            names[id as usize] = name.clone();
        }
        names
    }

    /// Adds a sample row; `Some(first line)` if the same EIP, interval and host came before.
    pub fn add_sample(
        &mut self,
        eip: IpAddr,
        start: i64,
        host: i64,
        line: u64,
        (inbound, outbound, partial): (u64, u64, bool),
    ) -> Result<Option<u64>, StagingError> {
        let k = key(eip);
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO samples (eip, start, host, line, bytes_in, bytes_out, partial)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            )
            .map_err(sql("add sample"))?
            .execute(params![
                k,
                start,
                host,
                line as i64,
                inbound as i64,
                outbound as i64,
                partial
            ])
            .map_err(sql("add sample"))?;
        if inserted == 1 {
            return Ok(None);
        }
        let first: i64 = self
            .conn
            .prepare_cached("SELECT line FROM samples WHERE eip = ?1 AND start = ?2 AND host = ?3")
            .map_err(sql("find duplicate"))?
            .query_row(params![k, start, host], |r| r.get(0))
            .map_err(sql("find duplicate"))?;
        Ok(Some(first as u64))
    }

    pub fn add_presence(
        &mut self,
        eip: IpAddr,
        host: i64,
        from: i64,
        to: Option<i64>,
    ) -> Result<(), StagingError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO presence (eip, host, from_s, to_s) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(sql("add presence"))?
            .execute(params![key(eip), host, from, to])
            .map_err(sql("add presence"))?;
        Ok(())
    }

    /// Ends loading; reads may start.
    pub fn finish_loading(&mut self) -> Result<(), StagingError> {
        self.conn.execute_batch("COMMIT").map_err(sql("commit"))
    }

    /// Every EIP with a sample or a presence, in address order, `limit` after `after`.
    pub fn eips_after(
        &self,
        after: Option<IpAddr>,
        limit: usize,
    ) -> Result<Vec<IpAddr>, StagingError> {
        let lo = after.map(key).unwrap_or_default();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT eip FROM (SELECT DISTINCT eip FROM samples WHERE eip > ?1
                                  UNION SELECT DISTINCT eip FROM presence WHERE eip > ?1)
                 ORDER BY eip LIMIT ?2",
            )
            .map_err(sql("list EIPs"))?;
        let keys = stmt
            .query_map(params![lo, limit as i64], |r| r.get::<_, Vec<u8>>(0))
            .map_err(sql("list EIPs"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("list EIPs"))?;
        Ok(keys.iter().filter_map(|k| from_key(k)).collect())
    }

    /// `eip`'s rows summed per interval over hosts, in time order: `(start, in, out, partial)`.
    pub fn summed(&self, eip: IpAddr) -> Result<Vec<crate::billing::replay::Row>, StagingError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT start, sum(bytes_in), sum(bytes_out), max(partial) FROM samples
                 WHERE eip = ?1 GROUP BY start ORDER BY start",
            )
            .map_err(sql("read samples"))?;
        let rows = stmt
            .query_map([key(eip)], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, bool>(3)?,
                ))
            })
            .map_err(sql("read samples"))?
            .collect::<Result<_, _>>()
            .map_err(sql("read samples"))?;
        Ok(rows)
    }

    /// `eip`'s rows per host, for the fleet reconstruction.
    pub fn host_rows(&self, eip: IpAddr) -> Result<Vec<Row>, StagingError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT host, start, bytes_in, bytes_out, partial FROM samples WHERE eip = ?1",
            )
            .map_err(sql("read samples"))?;
        let rows = stmt
            .query_map([key(eip)], |r| {
                Ok(Row {
                    host: r.get::<_, i64>(0)? as usize,
                    start: r.get(1)?,
                    inbound: r.get::<_, i64>(2)? as u64,
                    outbound: r.get::<_, i64>(3)? as u64,
                    partial: r.get(4)?,
                })
            })
            .map_err(sql("read samples"))?
            .collect::<Result<_, _>>()
            .map_err(sql("read samples"))?;
        Ok(rows)
    }

    pub fn presence(&self, eip: IpAddr) -> Result<Vec<Presence>, StagingError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT host, from_s, to_s FROM presence WHERE eip = ?1")
            .map_err(sql("read presence"))?;
        let rows = stmt
            .query_map([key(eip)], |r| {
                Ok(Presence {
                    host: r.get::<_, i64>(0)? as usize,
                    from: r.get(1)?,
                    to: r.get(2)?,
                })
            })
            .map_err(sql("read presence"))?
            .collect::<Result<_, _>>()
            .map_err(sql("read presence"))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_like_addresses() {
        let mut addrs: Vec<IpAddr> = [
            "2001:db8::1",
            "203.0.113.9",
            "10.0.0.1",
            "2001:db8::",
            "203.0.113.10",
            "::ffff:1.2.3.4",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut keys: Vec<Vec<u8>> = addrs.iter().map(|a| key(*a)).collect();
        addrs.sort();
        keys.sort();
        let back: Vec<IpAddr> = keys.iter().map(|k| from_key(k).unwrap()).collect();
        assert_eq!(back, addrs);
    }
}
