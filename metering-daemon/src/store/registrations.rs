//! The EIPs a commit registers, as one record file (`rounds/<seq>.eips`) instead of a row each:
//! a commit's new EIPs have consecutive ids, so the file is their addresses in id order, each
//! with the start of the presence range it opened. A million new EIPs were 2,000,000 SQLite
//! rows (registration and presence) and took 1.5 s of their first round; as a file, a write.
//!
//! Record (`EIP_RECORD` bytes): family (4 or 6), the address in 16 bytes (an IPv4 address in
//! the first 4), whether a presence range opened (0 or 1), its start (i64 LE).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, pair_rows, records::read_records, sql};

pub(super) const EIP_RECORD: usize = 1 + 16 + 1 + 8;

/// Appends the record of one new EIP.
pub(super) fn encode_registration(out: &mut Vec<u8>, eip: IpAddr, opened_from: Option<i64>) {
    let mut address = [0u8; 16];
    match eip {
        IpAddr::V4(a) => {
            out.push(4);
            address[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(6);
            address = a.octets();
        }
    }
    out.extend_from_slice(&address);
    out.push(u8::from(opened_from.is_some()));
    out.extend_from_slice(&opened_from.unwrap_or(0).to_le_bytes());
}

/// One record: the address and the start of the presence range it opened.
pub(super) fn decode_registration(r: &[u8]) -> Result<(IpAddr, Option<i64>), String> {
    let address: [u8; 16] = r[1..17].try_into().expect("16 bytes");
    let eip = match r[0] {
        4 => IpAddr::V4(Ipv4Addr::new(
            address[0], address[1], address[2], address[3],
        )),
        6 => IpAddr::V6(Ipv6Addr::from(address)),
        other => return Err(format!("address family {other}")),
    };
    let from = i64::from_le_bytes(r[18..26].try_into().expect("8 bytes"));
    Ok((eip, (r[17] == 1).then_some(from)))
}

/// A registration file as its row describes it.
struct EipFile {
    seq: i64,
    first_id: u32,
    bytes: i64,
}

impl Store {
    fn eip_files(
        &self,
        condition: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<EipFile>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT seq, first_id, bytes FROM eip_files WHERE {condition} ORDER BY seq"
            ))
            .map_err(sql("read registrations"))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(EipFile {
                    seq: r.get(0)?,
                    first_id: r.get(1)?,
                    bytes: r.get(2)?,
                })
            })
            .map_err(sql("read registrations"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql("read registrations"))
    }

    /// The records of a registration file: `(id, address, presence start)`.
    fn registrations(&self, file: &EipFile) -> Result<Vec<(u32, IpAddr, Option<i64>)>, StoreError> {
        let path = self.registrations_file(file.seq);
        let blob = read_records(&path, file.bytes)?;
        let corrupt = |detail: String| StoreError::Corrupt {
            what: "registration file",
            eip: path.display().to_string(),
            detail,
        };
        if blob.len() % EIP_RECORD != 0 {
            return Err(corrupt(format!("{} bytes", blob.len())));
        }
        blob.chunks_exact(EIP_RECORD)
            .zip(file.first_id..)
            .map(|(r, id)| {
                let (eip, from) = decode_registration(r).map_err(corrupt)?;
                Ok((id, eip, from))
            })
            .collect()
    }

    /// Every registered EIP with an id above `known`: the rows of stores written before
    /// registration files, then the files.
    pub(super) fn registered_after(&self, known: i64) -> Result<Vec<(u32, IpAddr)>, StoreError> {
        let mut out = Vec::new();
        for (id, address) in pair_rows::<u32, String>(
            &self.conn,
            &format!("SELECT id, address FROM eips WHERE id > {known} ORDER BY id"),
            "read EIP ids",
        )? {
            out.push((id, super::parse_eip(&address)?));
        }
        for file in self.eip_files("first_id + count - 1 > ?1", [known])? {
            out.extend(
                self.registrations(&file)?
                    .into_iter()
                    .filter(|(id, _, _)| i64::from(*id) > known)
                    .map(|(id, eip, _)| (id, eip)),
            );
        }
        Ok(out)
    }

    /// The presence range EIP `id` opened when it was registered by a file: its start and the
    /// commit, if it did.
    pub(super) fn registration_presence(&self, id: u32) -> Result<Option<(i64, i64)>, StoreError> {
        let file = self
            .conn
            .query_row(
                "SELECT seq, first_id, bytes FROM eip_files
                 WHERE first_id <= ?1 AND ?1 < first_id + count",
                [id],
                |r| {
                    Ok(EipFile {
                        seq: r.get(0)?,
                        first_id: r.get(1)?,
                        bytes: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(sql("read registrations"))?;
        let Some(file) = file else {
            return Ok(None);
        };
        // One record, read where it is (a removal may close many EIPs of a large file).
        let path = self.registrations_file(file.seq);
        let corrupt = |detail: String| StoreError::Corrupt {
            what: "registration file",
            eip: path.display().to_string(),
            detail,
        };
        let mut record = [0u8; EIP_RECORD];
        let offset = u64::from(id - file.first_id) * EIP_RECORD as u64;
        std::fs::File::open(&path)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut record, offset))
            .map_err(|e| corrupt(e.to_string()))?;
        let (_, from) = decode_registration(&record).map_err(corrupt)?;
        Ok(from.map(|from| (from, file.seq)))
    }

    /// Presence ranges opened by registration files of commits `(after, up_to]`: `(id, start)`.
    pub(super) fn registered_presence(
        &self,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<(u32, i64)>, StoreError> {
        let mut out = Vec::new();
        for file in self.eip_files("seq > ?1 AND seq <= ?2", params![after, up_to])? {
            out.extend(
                self.registrations(&file)?
                    .into_iter()
                    .filter_map(|(id, _, from)| Some((id, from?))),
            );
        }
        Ok(out)
    }
}
